"""Match-action tables of the embedded target, with direct counters and ageing."""

from __future__ import annotations

import heapq
import time
from dataclasses import dataclass, field

from .errors import UnsupportedConstruct


class TableError(Exception):
    """A table operation refused; code is a google.rpc code name."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


@dataclass(slots=True)
class Entry:
    key: tuple                 # per match field: int | (value, plen) | (value, mask) | (lo, hi)
    priority: int
    action: object             # pipeline.Action
    data: tuple
    packets: int = 0
    bytes: int = 0
    idle_timeout_ns: int = 0
    last_hit: float = field(default_factory=time.monotonic)
    idle_notified: bool = False


def _hex(v: str) -> int:
    return int(v, 16)


class Table:
    def __init__(self, prog, js: dict):
        """prog: the pipeline.Program the table belongs to; js: its BMv2 JSON."""
        self.prog = prog
        self.name, self.id = js["name"], js["id"]
        if js.get("type", "simple") != "simple":
            raise UnsupportedConstruct(f"table {self.name}: type {js['type']!r} (action profiles)")
        if js.get("direct_meters"):
            raise UnsupportedConstruct(f"table {self.name}: direct meters")
        self.match_type = js["match_type"]
        self.max_size = js["max_size"]
        self.with_counters = js.get("with_counters", False)
        self.support_timeout = js.get("support_timeout", False)
        self.kinds: list[str] = []
        self.widths: list[int] = []
        readers = []
        for k in js["key"]:
            mt = k["match_type"]
            if mt not in ("exact", "lpm", "ternary", "range", "valid", "optional"):
                raise UnsupportedConstruct(f"table {self.name}: match type {mt!r}")
            if mt == "valid":
                hi = prog.hidx[k["target"]] if isinstance(k["target"], str) else prog.hidx[k["target"][0]]
                readers.append(lambda p, hi=hi: int(p.valid[hi]))
                width = 1
                mt = "exact"
            else:
                hi, fi, width = prog._field_ref(k["target"])
                mask = _hex(k["mask"]) if k.get("mask") else None
                if fi < 0:
                    readers.append(lambda p, hi=hi: int(p.valid[hi]))
                elif mask is None:
                    readers.append(lambda p, hi=hi, fi=fi: p.vals[hi][fi])
                else:
                    readers.append(lambda p, hi=hi, fi=fi, m=mask: p.vals[hi][fi] & m)
            self.kinds.append("ternary" if mt == "optional" else mt)
            self.widths.append(width)
        self.readers = readers
        self.exact = all(k == "exact" for k in self.kinds)
        self.actions = {}
        for aname in js["actions"]:
            self.actions[aname] = prog.actions[aname]
        de = js.get("default_entry")
        if de is not None:
            act = prog.action_by_id[de["action_id"]]
            self.default = (act, tuple(_hex(x) for x in de.get("action_data", [])))
            self.default_const = bool(de.get("action_const"))
        else:
            self.default = (prog.actions.get("NoAction") or next(iter(self.actions.values())), ())
            self.default_const = False
        self.initial_default = self.default
        self.by_key: dict[tuple, Entry] = {}
        self.n_aging = 0                     # entries with an idle timeout
        self._aging: list = []               # heap, see sweep()
        self._seq = 0
        self.ordered: list[Entry] = []       # non-exact tables, best first
        self.const_entries = False
        for e in js.get("entries", []):
            self._const_entry(e)
            self.const_entries = True

    def _const_entry(self, e: dict) -> None:
        key = []
        for mk, kind in zip(e["match_key"], self.kinds):
            mt = mk["match_type"]
            if mt in ("exact", "valid"):
                key.append(_hex(mk["key"]) if mt == "exact" else int(mk["key"]))
            elif mt == "lpm":
                key.append((_hex(mk["key"]), mk["prefix_length"]))
            elif mt == "ternary":
                key.append((_hex(mk["key"]), _hex(mk["mask"])))
            elif mt == "range":
                key.append((_hex(mk["start"]), _hex(mk["end"])))
        act = self.prog.action_by_id[e["action_entry"]["action_id"]]
        data = tuple(_hex(x) for x in e["action_entry"]["action_data"])
        # BMv2: a low number is a high priority; P4Runtime: the reverse
        self._add(Entry(tuple(key), -e.get("priority", 0), act, data))

    # -- lookup ------------------------------------------------------------------
    def lookup_key(self, p) -> tuple:
        return tuple(r(p) for r in self.readers)

    def _matches(self, entry: Entry, key: tuple) -> bool:
        for kind, want, got, w in zip(self.kinds, entry.key, key, self.widths):
            if kind == "exact":
                if want != got:
                    return False
            elif kind == "lpm":
                value, plen = want
                shift = w - plen
                if (got >> shift) != (value >> shift):
                    return False
            elif kind == "ternary":
                value, mask = want
                if got & mask != value & mask:
                    return False
            elif kind == "range":
                lo, hi = want
                if not lo <= got <= hi:
                    return False
        return True

    def find(self, key: tuple) -> Entry | None:
        if self.exact:
            return self.by_key.get(key)
        for e in self.ordered:
            if self._matches(e, key):
                return e
        return None

    def apply(self, p):
        key = self.lookup_key(p)
        e = self.find(key)
        if e is None:
            act, data = self.default
            return False, act, data
        if self.with_counters:
            e.packets += 1
            e.bytes += self.prog.get_sm(p, "packet_length")
        if self.support_timeout:
            e.last_hit = time.monotonic()
            if e.idle_notified:   # idle, now hit again: age it anew
                e.idle_notified = False
                self._age(e)
        return True, e.action, e.data

    # -- control plane -------------------------------------------------------------
    def _rank(self, e: Entry):
        if self.match_type == "lpm":
            return -max((plen for (k, (v, plen)) in
                         ((k, x) for k, x in zip(self.kinds, e.key)) if k == "lpm"), default=0)
        return -e.priority

    def _add(self, e: Entry) -> None:
        self.by_key[self._ident(e.key, e.priority)] = e
        if not self.exact:
            self.ordered.append(e)
            self.ordered.sort(key=self._rank)

    def _ident(self, key: tuple, priority: int) -> tuple:
        return key if self.exact else (key, priority)

    def action(self, action_name: str):
        """One of the table's actions, by name (P4Runtime 9.1.2: another is INVALID_ARGUMENT)."""
        act = self.actions.get(action_name)
        if act is None:
            raise TableError("INVALID_ARGUMENT", f"action {action_name} is not an action of table {self.name}")
        return act

    def check_action(self, action_name: str, data: tuple, default: bool = False):
        act = self.action(action_name)
        if len(data) != len(act.params):
            raise TableError("INVALID_ARGUMENT", f"action {action_name} takes {len(act.params)} parameter(s), "
                                                 f"got {len(data)}")
        return act

    def insert(self, e: Entry) -> None:
        if self.const_entries:
            raise TableError("PERMISSION_DENIED", f"table {self.name} has const entries")
        ident = self._ident(e.key, e.priority)
        if ident in self.by_key:
            raise TableError("ALREADY_EXISTS", f"entry already exists in table {self.name}")
        if len(self.by_key) >= self.max_size:
            raise TableError("RESOURCE_EXHAUSTED", f"table {self.name} is full ({self.max_size} entries)")
        self._add(e)
        self.n_aging += bool(e.idle_timeout_ns)
        self._age(e)

    def modify(self, e: Entry) -> None:
        old = self.by_key.get(self._ident(e.key, e.priority))
        if old is None:
            raise TableError("NOT_FOUND", f"no such entry in table {self.name}")
        old.action, old.data = e.action, e.data
        self.n_aging += bool(e.idle_timeout_ns) - bool(old.idle_timeout_ns)
        old.idle_timeout_ns = e.idle_timeout_ns
        self._age(old)

    def delete(self, key: tuple, priority: int) -> None:
        if self.const_entries:
            raise TableError("PERMISSION_DENIED", f"table {self.name} has const entries")
        e = self.by_key.pop(self._ident(key, priority), None)
        if e is None:
            raise TableError("NOT_FOUND", f"no such entry in table {self.name}")
        self.n_aging -= bool(e.idle_timeout_ns)
        if not self.exact:
            self.ordered.remove(e)

    def get(self, key: tuple, priority: int) -> Entry | None:
        return self.by_key.get(self._ident(key, priority))

    # -- idle timeout ------------------------------------------------------------
    # A heap of (deadline, seq, entry) instead of a scan of every entry: an
    # entry hit since it was pushed is pushed again at its real deadline when
    # popped, so the cost is per expiry and per timeout period of an active
    # entry, never per entry per sweep.
    def _age(self, e: Entry) -> None:
        if self.support_timeout and e.idle_timeout_ns:
            self._seq += 1
            heapq.heappush(self._aging, (e.last_hit + e.idle_timeout_ns / 1e9, self._seq, e))

    def sweep(self, now: float) -> list[Entry]:
        """Entries idle for longer than their idle_timeout_ns, each reported
        once until it is hit again (as BMv2's ageing monitor does)."""
        out = []
        heap = self._aging
        while heap and heap[0][0] <= now:
            _, _, e = heapq.heappop(heap)
            if e.idle_notified or not e.idle_timeout_ns or self.by_key.get(self._ident(e.key, e.priority)) is not e:
                continue   # already reported, ageing off, or deleted
            deadline = e.last_hit + e.idle_timeout_ns / 1e9
            if deadline > now:
                self._seq += 1
                heapq.heappush(heap, (deadline, self._seq, e))
            else:
                e.idle_notified = True
                out.append(e)
        return out

    def set_default(self, action_name: str | None, data: tuple) -> None:
        if self.default_const:
            raise TableError("PERMISSION_DENIED", f"the default action of table {self.name} is const")
        if action_name is None:
            self.default = self.initial_default
            return
        act = self.check_action(action_name, data, default=True)
        self.default = (act, data)

    def clear(self) -> None:
        if not self.const_entries:
            self.by_key.clear()
            self.ordered.clear()
            self.n_aging = 0
