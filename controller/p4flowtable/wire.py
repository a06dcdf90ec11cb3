"""Flow entries encoded straight to P4Runtime's wire format, from templates.

A flow's add is two Updates whose layout is fixed by their table and action:
the tags, field ids and every length are the same for every flow of a
family and transport; only the values differ, and each has its field's
fixed width. Building them as protobuf messages and serializing them was
most of a flow's encoding cost. Here each (update type, table, action) gets
a template once: the constant bytes between the value slots, packed with
the values by one struct call. The protobuf schema gives the field numbers
(they are read from the descriptors, not written here); protobuf itself is
the reference: tests/test_wire.py parses what this writes and compares it,
message for message, with what ip.flow_entry builds.
"""

from __future__ import annotations

import array
import struct

from p4.v1 import p4runtime_pb2 as p4r

from .ip import _PARAMS_OF, _ROUTE_PARAMS, TTL_DECREMENT_DELTA, _layout, csum_delta, entry_values

try:
    from . import _wire      # compiled at install (setup.py); EntryEncoder.flow computes in Python without it
except ImportError:
    _wire = None

_VARINT, _LEN = 0, 2


def _num(msg, name: str) -> int:
    return msg.DESCRIPTOR.fields_by_name[name].number


def varint(v: int) -> bytes:
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def _tag(num: int, wire_type: int) -> bytes:
    return varint(num << 3 | wire_type)


class Slot:
    """A value of fixed width (bytes) in a template."""
    __slots__ = ("width",)

    def __init__(self, width: int):
        self.width = width


def _size(parts: list) -> int:
    return sum(p.width if isinstance(p, Slot) else len(p) for p in parts)


def _field(num: int, parts: list) -> list:
    """A length-delimited field holding parts (bytes and slots)."""
    return [_tag(num, _LEN) + varint(_size(parts))] + parts


def _uint(num: int, v: int) -> bytes:
    return _tag(num, _VARINT) + varint(v)


_F = {"field_id": _num(p4r.FieldMatch, "field_id"), "exact": _num(p4r.FieldMatch, "exact"),
      "value": _num(p4r.FieldMatch.Exact, "value"), "table_id": _num(p4r.TableEntry, "table_id"),
      "match": _num(p4r.TableEntry, "match"), "action": _num(p4r.TableEntry, "action"),
      "idle_timeout_ns": _num(p4r.TableEntry, "idle_timeout_ns"), "ta_action": _num(p4r.TableAction, "action"),
      "action_id": _num(p4r.Action, "action_id"), "params": _num(p4r.Action, "params"),
      "param_id": _num(p4r.Action.Param, "param_id"), "param_value": _num(p4r.Action.Param, "value"),
      "type": _num(p4r.Update, "type"), "entity": _num(p4r.Update, "entity"),
      "table_entry": _num(p4r.Entity, "table_entry"), "updates": _num(p4r.WriteRequest, "updates"),
      "device_id": _num(p4r.WriteRequest, "device_id"), "election_id": _num(p4r.WriteRequest, "election_id"),
      "high": _num(p4r.Uint128, "high"), "low": _num(p4r.Uint128, "low")}
assert _F["table_id"] < _F["match"] < _F["action"] < _F["idle_timeout_ns"]   # the order protobuf writes them in


_INT_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}


class UpdateTemplate:
    """One (update type, table, action) layout: pack(keys, params, ttl) is
    the serialized Update, as a WriteRequest's `updates` field carries it
    (tag and length included). Values wider than 8 bytes (IPv6 addresses)
    are packed from their big-endian bytes."""

    def __init__(self, kind: int, table_id: int, fields: tuple, action_id: int | None, params: tuple):
        """fields: (field id, width) of the match, in order; params: (param
        id or None, width) of the action (None: left out, as flow_entry
        does); action_id None: an update without an action (a DELETE)."""
        self.fields, self.params = fields, params
        match = []
        for fid, width in fields:
            match += _field(_F["match"], [_uint(_F["field_id"], fid)]
                            + _field(_F["exact"], _field(_F["value"], [Slot(width)])))
        action = []
        if action_id is not None:
            inner = [_uint(_F["action_id"], action_id)]
            for pid, width in params:
                if pid is not None:
                    inner += _field(_F["params"], [_uint(_F["param_id"], pid)]
                                    + _field(_F["param_value"], [Slot(width)]))
            action = _field(_F["action"], _field(_F["ta_action"], inner))
        self._entry = [_uint(_F["table_id"], table_id)] + match + action
        self._kind = _uint(_F["type"], kind)
        self._keep = [pid is not None for pid, _ in params] if action_id is not None else []
        self._by_ttl: dict[int, tuple[struct.Struct, list, list]] = {}
        self._packers: dict[tuple[int, bool], object] = {}

    def _compiled(self, ttl: int) -> tuple[struct.Struct, list, list]:
        got = self._by_ttl.get(ttl)
        if got is None:
            entry = self._entry + ([_uint(_F["idle_timeout_ns"], ttl)] if ttl else [])
            update = [self._kind] + _field(_F["entity"], _field(_F["table_entry"], entry))
            parts = _field(_F["updates"], update)
            fmt, consts, merged = [">"], [], []
            for p in parts:           # adjacent constants joined: fewer arguments to pack
                if isinstance(p, bytes) and merged and isinstance(merged[-1], bytes):
                    merged[-1] += p
                else:
                    merged.append(p)
            for p in merged:
                if isinstance(p, bytes):
                    fmt.append(f"{len(p)}s")
                    consts.append(p)
                else:
                    fmt.append(_INT_CODES.get(p.width, f"{p.width}s"))
                    consts.append(p)
            slots = [(i, c.width) for i, c in enumerate(consts) if isinstance(c, Slot)]
            got = self._by_ttl[ttl] = (struct.Struct("".join(fmt)), consts, slots)
        return got

    def pack(self, keys: tuple[int, ...], params: tuple[int, ...] = (), ttl: int = 0) -> bytes:
        """The Update's bytes: keys fill the match's slots in order, the
        params the action's (those the action takes), ttl the idle timeout."""
        f = self._packers.get((ttl, bool(params)))
        if f is None:
            f = self._packers[ttl, bool(params)] = self._packer(ttl, bool(params))
        return f(keys, params)

    def _packer(self, ttl: int, with_params: bool):
        """One function per (ttl, params or not) that passes each constant and
        each value straight to the struct's pack: no loop over the slots per
        call (a quarter of a flow's encoding went to that loop)."""
        st, consts, slots = self._compiled(ttl)
        kept = [i for i, keep in enumerate(self._keep) if keep] if with_params else []
        nkeys = len(slots) - len(kept)
        env: dict = {"_pack": st.pack}
        args = []
        slot_at = {i: (n, width) for n, (i, width) in enumerate(slots)}
        for i, c in enumerate(consts):
            if i not in slot_at:
                env[f"_c{i}"] = c
                args.append(f"_c{i}")
                continue
            n, width = slot_at[i]
            v = f"k[{n}]" if n < nkeys else f"p[{kept[n - nkeys]}]"
            args.append(v if width in _INT_CODES else f"{v}.to_bytes({width}, 'big')")
        exec(f"def pack(k, p):\n    return _pack({', '.join(args)})\n", env)   # noqa: S102 (our own text)
        return env["pack"]


def write_request(device_id: int, election_id: int, updates: list[bytes]) -> bytes:
    """A serialized WriteRequest of already serialized `updates` fields."""
    eid = _uint(_F["high"], election_id >> 64) if election_id >> 64 else b""
    eid += _uint(_F["low"], election_id & (2**64 - 1)) if election_id & (2**64 - 1) else b""
    head = (_uint(_F["device_id"], device_id) if device_id else b"") + _tag(_F["election_id"], _LEN) \
        + varint(len(eid)) + eid
    return head + b"".join(updates)


# _wire.c's value codes: the match fields' in _MATCH_FIELDS order, then the
# action parameters' by name (a NAT action's and the route action's)
_KEY_CODES = (0, 1, 2, 3, 4, 5)
_CONST = 0xFFFF     # a step of constant bytes
_PARAM_CODES = {"nexthop_id": 6, "src_addr": 7, "dst_addr": 8, "src_port": 9, "dst_port": 10, "mtu": 11,
                "ip_csum_delta": 12, "l4_csum_delta": 13}


class EntryEncoder:
    """Flow entries as serialized Updates, one template per (update type,
    table, action) of a schema. native: flow() packs in _wire.c where that
    is built."""

    def __init__(self, schema, native: bool = True):
        self.schema = schema
        self._templates: dict[tuple, UpdateTemplate] = {}
        self._native = _wire if native else None
        self._variants: dict[tuple, dict] = {}   # (kind, with_action, ttl) -> {(version, l4proto, nat): parts}

    def update(self, kind: int, flow, d, with_action: bool = True, ttl: int = 0) -> bytes:
        layout, keys, params = entry_values(self.schema, flow, d, with_action)
        return self._template(kind, layout, with_action).pack(keys, params, ttl if with_action else 0)

    def _template(self, kind: int, layout: tuple, with_action: bool) -> UpdateTemplate:
        key = (kind, id(layout), with_action)      # _layout is cached: one object per layout
        t = self._templates.get(key)
        if t is None:
            table_id, fields, action_id, pdefs = layout
            t = self._templates[key] = UpdateTemplate(kind, table_id, fields, action_id if with_action else None,
                                                      pdefs)
        return t

    def _parts(self, kind: int, version: int, proto: int, nat: bool, with_action: bool, ttl: int) -> tuple:
        """A template as _wire.flow_updates takes it: its constants joined,
        its steps ((_CONST, n): the constants' next n bytes; (code, width):
        a value's slot) as native-order uint16 pairs, its size, and whether
        it holds the action's parameters."""
        t = self._template(kind, _layout(self.schema, version, proto, nat), with_action)
        _, consts, slots = t._compiled(ttl)
        codes = list(_KEY_CODES)
        if with_action:
            names = _PARAMS_OF[version] if nat else _ROUTE_PARAMS
            codes += [_PARAM_CODES[n] for n, keep in zip(names, t._keep) if keep]
        assert len(codes) == len(slots), (codes, slots)
        slot_code = {i: (code, width) for (i, width), code in zip(slots, codes)}
        steps = array.array("H")
        for i, c in enumerate(consts):
            steps.extend(slot_code[i] if i in slot_code else (_CONST, len(c)))
        size = sum(n for _, n in zip(steps[::2], steps[1::2]))
        return (b"".join(c for i, c in enumerate(consts) if i not in slot_code), steps.tobytes(), size,
                len(codes) > len(_KEY_CODES))

    def flow(self, kind: int, flow, with_action: bool = True, ttl: int = 0) -> tuple[bytes, bytes]:
        """Both directions' Updates of a flow: update() for each, with the
        work the two share (addresses, NAT, checksum sums) done once, in
        _wire.c where that is built."""
        if not with_action:
            ttl = 0
        if self._native is not None:
            variants = self._variants.get((kind, with_action, ttl))
            if variants is None:
                variants = self._variants[kind, with_action, ttl] = {}
            try:
                return self._native.flow_updates(variants, flow)
            except self._native.Unknown as e:      # this family, transport and NAT's first flow
                version, proto, nat = e.args       # (raised with the key tuple: its items are the args)
                variants[e.args] = self._parts(kind, version, proto, bool(nat), with_action, ttl)
                return self._native.flow_updates(variants, flow)
        o, r = flow.tuples
        os_, od, rs, rd = int(o.src), int(o.dst), int(r.src), int(r.dst)
        proto, v4 = o.l4proto, o.src.version == 4
        nat = not (os_ == rd and od == rs and o.sport == r.dport and o.dport == r.sport)    # model.has_nat
        layout = _layout(self.schema, o.src.version, proto, nat)
        t = self._template(kind, layout, with_action)
        ko = (flow.iif[0], os_, od, proto, o.sport, o.dport)
        kr = (flow.iif[1], rs, rd, proto, r.sport, r.dport)
        if not with_action:
            return t.pack(ko, (), 0), t.pack(kr, (), 0)
        (ro, rr), (no, nr) = flow.routes, flow.nexthops
        if not nat:
            return t.pack(ko, (no, ro.mtu), ttl), t.pack(kr, (nr, rr.mtu), ttl)
        # each direction rewritten to the other's tuple reversed (model.rewrite_for)
        ao, ar = os_ + od, rs + rd
        lo, lr = ao + o.sport + o.dport, ar + r.sport + r.dport
        po = (no, rd, rs, r.dport, r.sport, ro.mtu)
        pr = (nr, od, os_, o.dport, o.sport, rr.mtu)
        if v4:
            po += (csum_delta(ao, ar, TTL_DECREMENT_DELTA), csum_delta(lo, lr))
            pr += (csum_delta(ar, ao, TTL_DECREMENT_DELTA), csum_delta(lr, lo))
        else:
            po += (csum_delta(lo, lr),)
            pr += (csum_delta(lr, lo),)
        return t.pack(ko, po, ttl), t.pack(kr, pr, ttl)
