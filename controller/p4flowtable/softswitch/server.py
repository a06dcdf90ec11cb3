"""p4.v1.P4Runtime served by the embedded target (P4Runtime spec v1.3).

Arbitration with one primary per device, pipeline set/get, Write with
per-update errors, Read with wildcards and direct counters, StreamChannel
with PacketIn/PacketOut and idle-timeout notifications, Capabilities.
"""

from __future__ import annotations

import json
import logging
import queue
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent import futures
from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, status_pb2
from p4.config.v1 import p4info_pb2
from p4.v1 import p4runtime_pb2 as p4r
from p4.v1 import p4runtime_pb2_grpc

from ..fairqueue import PortFairQueue
from .meters import MeterArray, MeterConfig
from .pipeline import Output, PipelineError, Program, UnsupportedConstruct
from .tables import Entry, Table, TableError

log = logging.getLogger(__name__)
API_VERSION = "1.3.0"
READ_CHUNK = 1000       # entities per ReadResponse


class RequestError(Exception):
    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


def _int(b: bytes) -> int:
    return int.from_bytes(b, "big")


def _bytes(v: int, width: int) -> bytes:
    """A value in a response: the canonical byte string (P4Runtime spec 8.4:
    no leading zero bytes, one byte for zero), as BMv2 returns them. What a
    client writes may be padded to the width, or canonical."""
    return v.to_bytes(max(1, (v.bit_length() + 7) // 8), "big")


@dataclass
class TableMap:
    """A table's P4Info beside the program's table, and what each write of
    an entry checks against, worked out once (a write of 40,000 entries
    checks each of them)."""
    info: p4info_pb2.Table
    table: Table
    fields: list[tuple[int, str, int]]     # (field id, match kind, bitwidth), JSON key order
    default_only: frozenset[str] = frozenset()    # actions of DEFAULT_ONLY scope here

    def __post_init__(self):
        self.name = self.info.preamble.name
        self.plan = [(fid, kind, width, (1 << width) - 1) for fid, kind, width in self.fields]
        self.ternaryish = any(k in ("ternary", "range") for _, k, _ in self.fields)


class Pipeline:
    """A loaded Program plus the P4Info ids mapped onto its JSON names."""

    def __init__(self, p4info: p4info_pb2.P4Info, device_config: bytes, cpu_port: int, cookie: int):
        try:
            js = json.loads(device_config)
        except (ValueError, UnicodeDecodeError) as e:
            raise PipelineError(f"p4_device_config is not BMv2 JSON: {e}") from None
        self.prog = Program(js, cpu_port)
        self.p4info, self.device_config, self.cookie = p4info, device_config, cookie
        self.tables: dict[int, TableMap] = {}
        self.actions: dict[int, tuple[str, list[tuple[int, int]]]] = {}
        kinds = {p4info_pb2.MatchField.EXACT: "exact", p4info_pb2.MatchField.LPM: "lpm",
                 p4info_pb2.MatchField.TERNARY: "ternary", p4info_pb2.MatchField.RANGE: "range",
                 p4info_pb2.MatchField.OPTIONAL: "ternary"}
        for a in p4info.actions:
            if a.preamble.name not in self.prog.actions:
                raise PipelineError(f"P4Info action {a.preamble.name} is not in the JSON")
            self.actions[a.preamble.id] = (a.preamble.name, [(p.id, p.bitwidth) for p in a.params])
        self.action_ids = {name: aid for aid, (name, _) in self.actions.items()}   # for reads: an entry's action by name
        for t in p4info.tables:
            table = self.prog.tables.get(t.preamble.name)
            if table is None:
                raise PipelineError(f"P4Info table {t.preamble.name} is not in the JSON")
            fields = [(f.id, kinds.get(f.match_type, "?"), f.bitwidth) for f in t.match_fields]
            if len(fields) != len(table.kinds):
                raise PipelineError(f"table {t.preamble.name}: P4Info and JSON keys differ")
            default_only = frozenset(self.actions.get(ref.id, ("",))[0] for ref in t.action_refs
                                     if ref.scope == p4info_pb2.ActionRef.DEFAULT_ONLY)
            self.tables[t.preamble.id] = TableMap(t, table, fields, default_only)
        self.direct_counters = {c.preamble.id: c.direct_table_id for c in p4info.direct_counters}
        self.counters = {}
        for c in p4info.counters:
            if c.preamble.name not in self.prog.counters:
                raise PipelineError(f"P4Info counter {c.preamble.name} is not in the JSON")
            self.counters[c.preamble.id] = c.preamble.name
        self.meters: dict[int, MeterArray] = {}
        for m in p4info.meters:
            if m.preamble.name not in self.prog.meters:
                raise PipelineError(f"P4Info meter {m.preamble.name} is not in the JSON")
            self.meters[m.preamble.id] = self.prog.meters[m.preamble.name]
        self.packet_in = self._ctrl_meta("packet_in")
        self.packet_out = self._ctrl_meta("packet_out")

    def _ctrl_meta(self, name: str) -> list[tuple[int, int]]:
        for m in self.p4info.controller_packet_metadata:
            if m.preamble.name == name:
                fields = [(f.id, f.bitwidth) for f in m.metadata]
                if sum(w for _, w in fields) % 8:
                    raise PipelineError(f"controller header {name} is not a whole number of bytes")
                return fields
        return []

    # -- entity conversions ----------------------------------------------------
    def table_of(self, table_id: int) -> TableMap:
        tm = self.tables.get(table_id)
        if tm is None:
            raise RequestError("NOT_FOUND", f"no table with id {table_id}")
        return tm

    def key_of(self, tm: TableMap, te: p4r.TableEntry) -> tuple[tuple, int]:
        given = {}
        for m in te.match:
            if m.field_id in given:
                raise RequestError("INVALID_ARGUMENT", f"match field {m.field_id} given twice")
            given[m.field_id] = m
        key = []
        for fid, kind, width, full in tm.plan:
            m = given.pop(fid, None)
            if m is None:
                if kind == "exact":
                    raise RequestError("INVALID_ARGUMENT", f"table {tm.name}: exact match field {fid} is missing")
                key.append((0, full) if kind == "range" else (0, 0))     # lpm, ternary: match anything
                continue
            which = m.WhichOneof("field_match_type")
            if which != kind:
                if which == "optional" and kind == "ternary":
                    key.append((self._val(m.optional.value, width, fid), full))
                    continue
                raise RequestError("INVALID_ARGUMENT", f"match field {fid} of table {tm.name} is {kind}, got {which}")
            if kind == "exact":
                key.append(self._val(m.exact.value, width, fid))
            elif kind == "lpm":
                plen = m.lpm.prefix_len
                if not 0 < plen <= width:
                    raise RequestError("INVALID_ARGUMENT", f"match field {fid}: prefix length {plen}")
                v = self._val(m.lpm.value, width, fid)
                if v & ((1 << (width - plen)) - 1):
                    raise RequestError("INVALID_ARGUMENT", f"match field {fid}: bits beyond the prefix set")
                key.append((v, plen))
            elif kind == "ternary":
                v, mask = self._val(m.ternary.value, width, fid), self._val(m.ternary.mask, width, fid)
                if v & ~mask:
                    raise RequestError("INVALID_ARGUMENT", f"match field {fid}: value has bits outside the mask")
                key.append((v, mask))
            else:
                key.append((self._val(m.range.low, width, fid), self._val(m.range.high, width, fid)))
        if given:
            raise RequestError("INVALID_ARGUMENT", f"unknown match field id(s) {sorted(given)} for table "
                                                   f"{tm.name}")
        ternaryish = tm.ternaryish
        if ternaryish and te.priority <= 0:
            raise RequestError("INVALID_ARGUMENT", f"table {tm.name} needs a priority > 0")
        if not ternaryish and te.priority:
            raise RequestError("INVALID_ARGUMENT", f"table {tm.name} takes no priority")
        return tuple(key), te.priority

    @staticmethod
    def _val(b: bytes, width: int, fid: int) -> int:
        if not b:
            raise RequestError("INVALID_ARGUMENT", f"match field {fid}: empty value")
        v = _int(b)
        if v >> width:
            raise RequestError("INVALID_ARGUMENT", f"match field {fid}: value {v:#x} does not fit "
                                                   f"in {width} bits")
        return v

    def action_of(self, tm: TableMap, ta: p4r.TableAction) -> tuple[str, tuple]:
        if ta.WhichOneof("type") != "action":
            raise RequestError("UNIMPLEMENTED", "only direct actions (no action profiles)")
        a = ta.action
        # P4Runtime 9.1.2: an action_id that is not one of the table's choices is INVALID_ARGUMENT
        if a.action_id not in self.actions:
            raise RequestError("INVALID_ARGUMENT", f"no action with id {a.action_id}")
        name, params = self.actions[a.action_id]
        tm.table.action(name)       # one of the table's: checked before its parameters are read
        ps = a.params
        # as clients write them (every parameter, in P4Info's order) each is read in place, else by its id
        in_order = len(ps) == len(params) and all(p.param_id == pid for p, (pid, _) in zip(ps, params))
        given = None if in_order else {p.param_id: p.value for p in ps}
        if given is not None and len(given) != len(ps):     # each parameter once, as BMv2's server wants
            ids = [p.param_id for p in ps]
            twice = next(pid for pid in ids if ids.count(pid) > 1)
            raise RequestError("INVALID_ARGUMENT", f"action {name}: parameter {twice} given twice")
        data = []
        for i, (pid, width) in enumerate(params):
            if given is None:
                b = ps[i].value
            elif pid in given:
                b = given.pop(pid)
            else:
                raise RequestError("INVALID_ARGUMENT", f"action {name}: parameter {pid} is missing")
            v = _int(b)
            if v >> width:
                raise RequestError("INVALID_ARGUMENT", f"action {name}: parameter {pid} value {v:#x} does "
                                                       f"not fit in {width} bits")
            data.append(v)
        if given:
            raise RequestError("INVALID_ARGUMENT", f"action {name}: unknown parameter id(s) {sorted(given)}")
        return name, tuple(data)

    def entry_msg(self, tm: TableMap, e: Entry, counters: bool) -> p4r.TableEntry:
        te = p4r.TableEntry(table_id=tm.info.preamble.id, priority=e.priority,
                            idle_timeout_ns=e.idle_timeout_ns)
        for (fid, kind, width), k in zip(tm.fields, e.key):
            if kind == "exact":
                te.match.add(field_id=fid, exact=p4r.FieldMatch.Exact(value=_bytes(k, width)))
            elif kind == "lpm":
                if k[1]:
                    te.match.add(field_id=fid, lpm=p4r.FieldMatch.LPM(value=_bytes(k[0], width), prefix_len=k[1]))
            elif kind == "ternary":
                if k[1]:
                    te.match.add(field_id=fid, ternary=p4r.FieldMatch.Ternary(
                        value=_bytes(k[0], width), mask=_bytes(k[1], width)))
            else:
                te.match.add(field_id=fid, range=p4r.FieldMatch.Range(low=_bytes(k[0], width),
                                                                       high=_bytes(k[1], width)))
        aid = self.action_ids[e.action.name]
        te.action.action.action_id = aid
        for (pid, width), v in zip(self.actions[aid][1], e.data):
            te.action.action.params.add(param_id=pid, value=_bytes(v, width))
        if counters and tm.table.with_counters:
            te.counter_data.packet_count, te.counter_data.byte_count = e.packets, e.bytes
        return te


class Stream:
    """What the switch sends one client, waiting for the stream to take it.

    The CPU port's queue is fair between ingress ports (fairqueue.py): a
    port punting more than the client takes (a flood, within or without
    its punt meter) fills a queue of its own, PORT_QUEUE deep, and delays
    no other port's PacketIns by more than one packet each. Everything else
    (arbitration, errors, idle-timeout notifications) goes before any
    packet."""

    CONTROL_QUEUE = 8192
    PORT_QUEUE = 1024

    def __init__(self, peer: str = "?"):
        self._cond = threading.Condition(threading.Lock())
        # PacketIns by ingress port, the rest first
        self._queue = PortFairQueue(self.PORT_QUEUE, self.CONTROL_QUEUE)
        self.election_id: int | None = None
        self.device_id: int | None = None
        self.peer = peer          # the client: its certificate's name under TLS, else its address

    def send(self, msg: p4r.StreamMessageResponse | None) -> bool:
        """A message other than a PacketIn (None: the stream ends)."""
        with self._cond:
            if not self._queue.put_first(msg):
                return False
            self._cond.notify()
        return True

    def send_packet(self, port: int, msg: p4r.StreamMessageResponse) -> bool:
        """A PacketIn of a packet that came in on port; False: its queue is full."""
        with self._cond:
            if not self._queue.put(port, msg):
                return False
            self._cond.notify()
        return True

    def get(self, timeout: float):
        """The next message to send; raises queue.Empty after timeout."""
        with self._cond:
            if not self._cond.wait_for(lambda: len(self._queue), timeout):
                raise queue.Empty
            return self._queue.pop()


class SoftSwitchServer(p4runtime_pb2_grpc.P4RuntimeServicer):
    def __init__(self, device_id: int, cpu_port: int, ports=None):
        self.device_id = device_id
        self.cpu_port = cpu_port
        self.ports = ports
        self.pipeline: Pipeline | None = None
        self.lock = threading.RLock()
        self.streams: list[Stream] = []
        self.primary: Stream | None = None
        self.election_id_past: int | None = None   # the highest election id ever seen (spec 5.4)
        self.packet_in_dropped = 0

    # -- arbitration (P4Runtime spec 5.4, 5.5) ---------------------------------------
    def _primary_eid(self) -> int | None:
        return self.primary.election_id if self.primary else None

    def _arbitrate(self, s: Stream, eid: int) -> None:
        """A MasterArbitrationUpdate accepted from s. The primary is the client
        whose election id is at least the highest ever seen; a primary that
        goes leaves no primary until one claims such an id."""
        was_primary = s is self.primary
        s.election_id = eid
        if self.election_id_past is None or eid >= self.election_id_past:
            self.election_id_past = eid
            if s is not self.primary:
                log.info("primary: %s, election id %d", s.peer, eid)
            self.primary = s
            for o in self.streams:
                if o.election_id is not None:
                    self._notify(o)
        elif was_primary:          # downgraded itself: everyone hears of it
            self.primary = None
            for o in self.streams:
                if o.election_id is not None:
                    self._notify(o)
        else:
            self._notify(s)

    def _notify(self, s: Stream) -> None:
        """The advisory MasterArbitrationUpdate (spec 5.5): OK to the primary,
        ALREADY_EXISTS to backups, NOT_FOUND to backups while there is none."""
        msg = p4r.MasterArbitrationUpdate(device_id=self.device_id)
        if self.election_id_past is not None:
            eid = self.election_id_past
            msg.election_id.high, msg.election_id.low = eid >> 64, eid & (2**64 - 1)
        code = (code_pb2.OK if s is self.primary else
                code_pb2.ALREADY_EXISTS if self.primary is not None else code_pb2.NOT_FOUND)
        msg.status.code = code
        msg.status.message = {code_pb2.OK: "primary", code_pb2.ALREADY_EXISTS: "backup"}.get(code, "no primary")
        s.send(p4r.StreamMessageResponse(arbitration=msg))

    def _check_primary(self, device_id: int, eid_msg, context) -> bool:
        if device_id != self.device_id:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no device {device_id} (this is device {self.device_id})")
        eid = (eid_msg.high << 64) | eid_msg.low
        if self.primary is None or eid != self.primary.election_id:
            context.abort(grpc.StatusCode.PERMISSION_DENIED,
                          f"election id {eid} is not the primary's ({self._primary_eid()})")
        return True

    def StreamChannel(self, request_iterator, context):
        s = Stream(_peer_of(context))
        with self.lock:
            self.streams.append(s)

        def reader():
            try:
                for req in request_iterator:
                    kind = req.WhichOneof("update")
                    if kind == "arbitration":
                        a = req.arbitration
                        if a.device_id != self.device_id:
                            s.send(p4r.StreamMessageResponse(error=p4r.StreamError(
                                canonical_code=code_pb2.NOT_FOUND, message=f"no device {a.device_id}")))
                            continue
                        eid = (a.election_id.high << 64) | a.election_id.low
                        with self.lock:
                            if any(o is not s and o.election_id == eid for o in self.streams):
                                s.send(p4r.StreamMessageResponse(error=p4r.StreamError(
                                    canonical_code=code_pb2.INVALID_ARGUMENT,
                                    message=f"election id {eid} is used by another controller")))
                                continue
                            s.device_id = a.device_id
                            self._arbitrate(s, eid)
                    elif kind == "packet":
                        if s is not self.primary:
                            s.send(p4r.StreamMessageResponse(error=p4r.StreamError(
                                canonical_code=code_pb2.PERMISSION_DENIED, message="not primary",
                                packet_out=p4r.PacketOutError(packet_out=req.packet))))
                            continue
                        self.packet_out(req.packet)
            except Exception as e:  # stream torn down
                log.debug("stream reader ended: %s", e)
            finally:
                s.send(None)

        t = threading.Thread(target=reader, daemon=True)
        t.start()
        try:
            while context.is_active():
                try:
                    msg = s.get(timeout=0.5)
                except queue.Empty:
                    continue
                if msg is None:
                    break
                yield msg
        finally:
            with self.lock:
                self.streams.remove(s)
                if s is self.primary:
                    self.primary = None
                    for o in self.streams:
                        if o.election_id is not None:
                            self._notify(o)

    # -- packets -------------------------------------------------------------------
    def receive(self, port: int, frame: bytes) -> None:
        """A frame from a front port (ports thread)."""
        pipe = self.pipeline
        if pipe is None:
            return
        self._emit(pipe, pipe.prog.process(port, frame), port)

    def packet_out(self, pkt: p4r.PacketOut) -> None:
        pipe = self.pipeline
        if pipe is None:
            return
        given = {m.metadata_id: _int(m.value) for m in pkt.metadata}
        acc, bits = 0, 0
        for fid, width in pipe.packet_out:
            acc = (acc << width) | (given.get(fid, 0) & ((1 << width) - 1))
            bits += width
        header = acc.to_bytes(bits // 8, "big") if bits else b""
        self._emit(pipe, pipe.prog.process(self.cpu_port, header + pkt.payload), self.cpu_port)

    def _emit(self, pipe: Pipeline, out: Output | None, in_port: int) -> None:
        if out is None:
            return
        if out.port == self.cpu_port:
            nbytes = sum(w for _, w in pipe.packet_in) // 8
            acc = _int(out.data[:nbytes])
            left = nbytes * 8
            meta = []
            for fid, width in pipe.packet_in:
                left -= width
                meta.append(p4r.PacketMetadata(metadata_id=fid, value=_bytes((acc >> left) & ((1 << width) - 1),
                                                                              width)))
            msg = p4r.StreamMessageResponse(packet=p4r.PacketIn(payload=out.data[nbytes:], metadata=meta))
            primary = self.primary
            if primary is None or not primary.send_packet(in_port, msg):
                self.packet_in_dropped += 1
        elif self.ports is not None:
            self.ports.send(out.port, out.data)

    # -- pipeline ------------------------------------------------------------------
    def SetForwardingPipelineConfig(self, request, context):
        self._check_primary(request.device_id, request.election_id, context)
        A = p4r.SetForwardingPipelineConfigRequest
        if request.action == A.UNSPECIFIED:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "action is unspecified")
        if request.action in (A.VERIFY, A.VERIFY_AND_SAVE, A.VERIFY_AND_COMMIT, A.RECONCILE_AND_COMMIT):
            try:
                new = Pipeline(request.config.p4info, request.config.p4_device_config, self.cpu_port,
                               request.config.cookie.cookie)
            except (PipelineError, UnsupportedConstruct) as e:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"pipeline refused, the running one is kept: {e}")
            if request.action in (A.VERIFY_AND_COMMIT, A.RECONCILE_AND_COMMIT):
                with self.lock:
                    self.pipeline = new
            elif request.action == A.VERIFY_AND_SAVE:
                self._saved = new
        elif request.action == A.COMMIT:
            saved = getattr(self, "_saved", None)
            if saved is None:
                context.abort(grpc.StatusCode.FAILED_PRECONDITION, "nothing saved to commit")
            self.pipeline = saved
        return p4r.SetForwardingPipelineConfigResponse()

    def GetForwardingPipelineConfig(self, request, context):
        if request.device_id != self.device_id:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no device {request.device_id}")
        pipe = self.pipeline
        cfg = p4r.ForwardingPipelineConfig()
        if pipe is not None:
            R = p4r.GetForwardingPipelineConfigRequest
            cfg.cookie.cookie = pipe.cookie
            if request.response_type in (R.ALL, R.P4INFO_AND_COOKIE):
                cfg.p4info.CopyFrom(pipe.p4info)
            if request.response_type in (R.ALL, R.DEVICE_CONFIG_AND_COOKIE):
                cfg.p4_device_config = pipe.device_config
        return p4r.GetForwardingPipelineConfigResponse(config=cfg)

    def Capabilities(self, request, context):
        return p4r.CapabilitiesResponse(p4runtime_api_version=API_VERSION)

    # -- write -----------------------------------------------------------------------
    def Write(self, request, context):
        self._check_primary(request.device_id, request.election_id, context)
        pipe = self.pipeline
        if pipe is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no pipeline: call SetForwardingPipelineConfig")
        if request.atomicity not in (p4r.WriteRequest.CONTINUE_ON_ERROR,):
            context.abort(grpc.StatusCode.UNIMPLEMENTED, "only CONTINUE_ON_ERROR atomicity")
        results = []
        with pipe.prog.lock:
            for upd in request.updates:
                try:
                    self._update(pipe, upd)
                    results.append(None)
                except (RequestError, TableError) as e:
                    results.append((e.code, str(e)))
        if any(r is not None for r in results):
            status = status_pb2.Status(code=code_pb2.UNKNOWN, message="write failed")
            for r in results:
                err = p4r.Error(canonical_code=code_pb2.OK) if r is None else p4r.Error(
                    canonical_code=code_pb2.Code.Value(r[0]), message=r[1], space="p4ft-soft")
                a = any_pb2.Any()
                a.Pack(err)
                status.details.append(a)
            context.set_trailing_metadata((("grpc-status-details-bin", status.SerializeToString()),))
            context.set_code(grpc.StatusCode.UNKNOWN)
            context.set_details("; ".join(f"update {i}: {r[0]}: {r[1]}" for i, r in enumerate(results) if r))
        return p4r.WriteResponse()

    def _update(self, pipe: Pipeline, upd: p4r.Update) -> None:
        if upd.type == p4r.Update.UNSPECIFIED:
            raise RequestError("INVALID_ARGUMENT", "update type is unspecified")
        kind = upd.entity.WhichOneof("entity")
        if kind == "meter_entry":
            self._meter_write(pipe, upd)
            return
        if kind != "table_entry":
            raise RequestError("UNIMPLEMENTED", f"writing {kind} entities")
        te = upd.entity.table_entry
        tm = pipe.table_of(te.table_id)
        table = tm.table
        if te.is_default_action:
            if upd.type != p4r.Update.MODIFY:
                raise RequestError("INVALID_ARGUMENT", "the default entry can only be modified")
            if te.match:
                raise RequestError("INVALID_ARGUMENT", "the default entry has no match")
            if te.HasField("action"):
                name, data = pipe.action_of(tm, te.action)
                table.set_default(name, data)
            else:
                table.set_default(None, ())
            return
        key, prio = pipe.key_of(tm, te)
        if upd.type == p4r.Update.DELETE:
            table.delete(key, prio)
            return
        if te.idle_timeout_ns and not table.support_timeout:
            raise RequestError("INVALID_ARGUMENT", f"table {tm.info.preamble.name} does not support idle timeout")
        if not te.HasField("action"):
            raise RequestError("INVALID_ARGUMENT", "entry has no action")
        name, data = pipe.action_of(tm, te.action)
        act = table.check_action(name, data)
        if name in tm.default_only:     # the action's scope, not respected: P4Runtime 9.1.2
            raise RequestError("PERMISSION_DENIED", f"action {name} is default-only in table {tm.name}")
        entry = Entry(key, prio, act, data, idle_timeout_ns=te.idle_timeout_ns)
        if upd.type == p4r.Update.INSERT:
            table.insert(entry)
        else:
            table.modify(entry)

    @staticmethod
    def _meter_of(pipe: Pipeline, meter_id: int) -> MeterArray:
        meter = pipe.meters.get(meter_id)
        if meter is None:
            raise RequestError("NOT_FOUND", f"no meter with id {meter_id}")
        return meter

    def _meter_write(self, pipe: Pipeline, upd: p4r.Update) -> None:
        """A meter cell's rates: MODIFY only, one cell per update (as PI
        answers BMv2's clients); no config resets the cell to all green."""
        me = upd.entity.meter_entry
        meter = self._meter_of(pipe, me.meter_id)
        if upd.type != p4r.Update.MODIFY:
            raise RequestError("INVALID_ARGUMENT", f"{p4r.Update.Type.Name(upd.type)} is not supported for "
                                                   "meters: write MODIFY")
        if not me.HasField("index"):
            raise RequestError("UNIMPLEMENTED", "wildcard write of an indirect meter: name the index")
        if not 0 <= me.index.index < meter.size:
            raise RequestError("OUT_OF_RANGE", f"meter {meter.name} has {meter.size} cells, "
                                               f"index {me.index.index} is outside them")
        config = None
        if me.HasField("config"):
            c = me.config
            config = MeterConfig(c.cir, c.cburst, c.pir, c.pburst)
            if (why := config.check()) is not None:
                raise RequestError("INVALID_ARGUMENT", f"meter {meter.name}[{me.index.index}]: {why}")
        meter.set(me.index.index, config)

    # -- read ------------------------------------------------------------------------
    def Read(self, request, context):
        if request.device_id != self.device_id:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no device {request.device_id}")
        pipe = self.pipeline
        if pipe is None:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, "no pipeline")
        try:
            # Under the lock (which every packet takes) only what packets and
            # writes change is copied; the messages are built after it, so a
            # read of every entry does not stop forwarding while it is built
            # (200,000 entries take seconds here).
            with pipe.prog.lock:
                builds = [self._read(pipe, ent) for ent in request.entities]
        except (RequestError, TableError) as e:
            context.abort(getattr(grpc.StatusCode, e.code), str(e))
        # sent a thousand at a time as they are built: the client decodes
        # the first while the rest are being built
        chunk: list[p4r.Entity] = []
        for build in builds:
            for m in build():
                chunk.append(m)
                if len(chunk) == READ_CHUNK:
                    yield p4r.ReadResponse(entities=chunk)
                    chunk = []
        if chunk:
            yield p4r.ReadResponse(entities=chunk)

    def _read(self, pipe: Pipeline, ent: p4r.Entity) -> Callable[[], Iterable[p4r.Entity]]:
        """Called under the pipeline's lock: checks the request and copies
        what it reads; returns what builds the answer, without the lock."""
        kind = ent.WhichOneof("entity")
        if kind == "table_entry":
            te = ent.table_entry
            tms = [pipe.table_of(te.table_id)] if te.table_id else list(pipe.tables.values())
            counters = te.HasField("counter_data")
            parts: list = []      # per table: a default entry's message, or (table, entries copied, when)
            for tm in tms:
                if te.is_default_action:
                    act, data = tm.table.default
                    msg = pipe.entry_msg(tm, Entry((), 0, act, data), False)
                    del msg.match[:]
                    msg.is_default_action = True
                    parts.append(p4r.Entity(table_entry=msg))
                    continue
                since = te.HasField("time_since_last_hit")
                if since and not tm.table.support_timeout:
                    raise RequestError("INVALID_ARGUMENT", f"table {tm.info.preamble.name} does not support "
                                                           "idle timeout: do not ask for time_since_last_hit")
                # a MODIFY changes an entry in place, a hit its counters: copies
                copied = [Entry(e.key, e.priority, e.action, e.data, e.packets, e.bytes, e.idle_timeout_ns, e.last_hit)
                          for e in self._entries(pipe, tm, te)]
                parts.append((tm, copied, time.monotonic() if since else None))

            def build() -> Iterator[p4r.Entity]:
                for part in parts:
                    if isinstance(part, p4r.Entity):
                        yield part
                        continue
                    tm, copied, now = part
                    for e in copied:
                        msg = pipe.entry_msg(tm, e, counters)
                        if now is not None:
                            msg.time_since_last_hit.elapsed_ns = int((now - e.last_hit) * 1e9)
                        yield p4r.Entity(table_entry=msg)
            return build
        if kind == "direct_counter_entry":
            te = ent.direct_counter_entry.table_entry
            if not te.table_id:
                raise RequestError("INVALID_ARGUMENT", "direct counter read needs a table id")
            tm = pipe.table_of(te.table_id)
            if not tm.table.with_counters:
                raise RequestError("INVALID_ARGUMENT", f"table {tm.info.preamble.name} has no direct counter")
            cells = [(Entry(e.key, e.priority, e.action, e.data, 0, 0, e.idle_timeout_ns, e.last_hit),
                      e.packets, e.bytes) for e in self._entries(pipe, tm, te)]

            def build_counters() -> list[p4r.Entity]:
                res = []
                for e, packets, nbytes in cells:
                    msg = pipe.entry_msg(tm, e, False)
                    msg.ClearField("action")
                    res.append(p4r.Entity(direct_counter_entry=p4r.DirectCounterEntry(
                        table_entry=msg, data=p4r.CounterData(packet_count=packets, byte_count=nbytes))))
                return res
            return build_counters
        res = self._read_small(pipe, ent, kind)
        return lambda: res

    def _read_small(self, pipe: Pipeline, ent: p4r.Entity, kind: str | None) -> list[p4r.Entity]:
        """The other entities, answered under the lock."""
        if kind == "counter_entry":
            ce = ent.counter_entry
            ids = [ce.counter_id] if ce.counter_id else list(pipe.counters)
            res = []
            for cid in ids:
                name = pipe.counters.get(cid)
                if name is None:
                    raise RequestError("NOT_FOUND", f"no counter with id {cid}")
                cells = pipe.prog.counters[name]
                idxs = [ce.index.index] if ce.HasField("index") else range(len(cells))
                for i in idxs:
                    if not 0 <= i < len(cells):
                        raise RequestError("OUT_OF_RANGE", f"counter {name} has {len(cells)} cells")
                    res.append(p4r.Entity(counter_entry=p4r.CounterEntry(
                        counter_id=cid, index=p4r.Index(index=i),
                        data=p4r.CounterData(packet_count=cells[i][0], byte_count=cells[i][1]))))
            return res
        if kind == "meter_entry":
            me = ent.meter_entry
            res = []
            for mid in [me.meter_id] if me.meter_id else list(pipe.meters):
                meter = self._meter_of(pipe, mid)
                idxs = [me.index.index] if me.HasField("index") else range(meter.size)
                for i in idxs:
                    if not 0 <= i < meter.size:
                        raise RequestError("OUT_OF_RANGE", f"meter {meter.name} has {meter.size} cells")
                    out = p4r.MeterEntry(meter_id=mid, index=p4r.Index(index=i))
                    if (cfg := meter.get(i)) is not None:
                        out.config.CopyFrom(p4r.MeterConfig(cir=cfg.cir, cburst=cfg.cburst, pir=cfg.pir,
                                                            pburst=cfg.pburst))
                    res.append(p4r.Entity(meter_entry=out))
            return res
        raise RequestError("UNIMPLEMENTED", f"reading {kind} entities")

    def _entries(self, pipe: Pipeline, tm: TableMap, te: p4r.TableEntry) -> list[Entry]:
        if te.match:
            key, prio = pipe.key_of(tm, te)
            e = tm.table.get(key, prio)
            return [e] if e is not None else []
        return list(tm.table.by_key.values())

    # -- idle timeout ------------------------------------------------------------------
    def idle_scan(self) -> None:
        """Notify the primary of entries idle longer than their idle_timeout_ns."""
        pipe = self.pipeline
        if pipe is None or self.primary is None:
            return
        now = time.monotonic()
        for tm in pipe.tables.values():
            if not tm.table.support_timeout or not tm.table.n_aging:
                continue
            idle = []
            with pipe.prog.lock:
                for e in tm.table.sweep(now):
                    msg = pipe.entry_msg(tm, e, False)
                    msg.ClearField("action")
                    idle.append(msg)
            for i in range(0, len(idle), 1000):
                self.primary.send(p4r.StreamMessageResponse(
                    idle_timeout_notification=p4r.IdleTimeoutNotification(
                        table_entry=idle[i:i + 1000], timestamp=time.time_ns())))


def _peer_of(context) -> str:
    """Who a stream's client is: the common name of the certificate it
    proved under mutual TLS, else its address."""
    try:
        auth = context.auth_context() or {}
    except Exception:     # noqa: BLE001 - no auth context outside TLS on some versions
        auth = {}
    names = auth.get("x509_common_name") or ()
    if names:
        return "certificate CN=" + b",".join(names).decode(errors="replace")
    return context.peer() or "?"


def serve(server_impl: SoftSwitchServer, address: str, workers: int = 8,
          credentials: grpc.ServerCredentials | None = None) -> grpc.Server:
    """credentials: TLS (tls.TlsFiles.server_credentials); None: plaintext."""
    return _serve(server_impl, address, workers, credentials)[0]


def serve_local(server_impl: SoftSwitchServer, workers: int = 8,
                credentials: grpc.ServerCredentials | None = None) -> tuple[grpc.Server, str]:
    """serve() on a loopback port of the kernel's choosing (tests, benches):
    the server and its address."""
    server, port = _serve(server_impl, "127.0.0.1:0", workers, credentials)
    return server, f"127.0.0.1:{port}"


def _serve(server_impl: SoftSwitchServer, address: str, workers: int,
           credentials: grpc.ServerCredentials | None) -> tuple[grpc.Server, int]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers),
                         options=[("grpc.max_receive_message_length", 256 << 20),
                                  ("grpc.max_send_message_length", 256 << 20),
                                  # The stream's window stays at HTTP/2's initial 64 KiB, not
                                  # grown to the link's bandwidth-delay product: PacketOuts this
                                  # switch has not read yet wait in the controller's fair queue
                                  # (p4runtime.StreamOut), not in a FIFO of megabytes here (a
                                  # large message still gets the window it needs)
                                  ("grpc.http2.bdp_probe", 0)])
    p4runtime_pb2_grpc.add_P4RuntimeServicer_to_server(server_impl, server)
    port = (server.add_secure_port(address, credentials) if credentials is not None
            else server.add_insecure_port(address))
    if port == 0:
        raise OSError(f"cannot listen on {address}")
    server.start()
    return server, port
