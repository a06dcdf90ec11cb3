"""BMv2 JSON (docs/JSON_format.md) compiled to Python callables, v1model semantics.

Everything is resolved at load time: field references become (header, field)
indices, expressions become closures, parse states and control-flow nodes
become functions. A construct this module does not implement is refused at
load time with its name and where it appears, never skipped.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import Callable

from .errors import PipelineError, UnsupportedConstruct  # noqa: F401  (raised here, named by callers)
from .meters import MeterArray
from .tables import Table

DROP_PORT = 511  # v1model: egress_spec value that drops


@dataclass(slots=True)
class HeaderType:
    name: str
    fields: list[tuple[str, int]]
    width: int                       # bits
    shifts: list[int] = field(default_factory=list)

    def __post_init__(self):
        pos = self.width
        for _, w in self.fields:
            pos -= w
            self.shifts.append(pos)


class Packet:
    """Per-packet state: header values, validity, unparsed payload."""

    __slots__ = ("vals", "valid", "payload", "exit", "error")

    def __init__(self, n_headers: int):
        self.vals: list[list[int]] = []
        self.valid: list[bool] = [False] * n_headers
        self.payload = b""
        self.exit = False
        self.error = 0


class ParserError(Exception):
    def __init__(self, code: int):
        self.code = code
        self.cursor: tuple[bytes, int] | None = None   # where parsing stopped


@dataclass(slots=True)
class Output:
    port: int
    data: bytes


def _hex(v: str) -> int:
    v = v.strip()
    neg = v.startswith("-")
    n = int(v.lstrip("-"), 16)
    return -n if neg else n


class Program:
    """One loaded pipeline. Immutable after load, but for table contents."""

    def __init__(self, js: dict, cpu_port: int | None = None):
        self.js = js
        self.cpu_port = cpu_port
        self.lock = threading.RLock()
        try:
            self._load()
        except (KeyError, TypeError, IndexError) as e:
            raise PipelineError(f"malformed BMv2 JSON: missing or wrong item {e!r}") from None

    # -- load ---------------------------------------------------------------
    def _load(self) -> None:
        js = self.js
        ver = js.get("__meta__", {}).get("version", [2, 0])
        if ver[0] != 2:
            raise UnsupportedConstruct(f"BMv2 JSON version {ver} (2.x supported)")
        for key in ("header_stacks", "header_union_types", "header_unions", "header_union_stacks",
                    "parse_vsets", "learn_lists", "extern_instances"):
            if js.get(key):
                raise UnsupportedConstruct(f"{key} ({', '.join(x.get('name', '?') for x in js[key])})")
        self.htypes = {}
        for ht in js["header_types"]:
            fields = []
            for f in ht["fields"]:
                if f[1] == "*":
                    raise UnsupportedConstruct(f"variable-length field {ht['name']}.{f[0]}")
                if len(f) > 2 and f[2]:
                    raise UnsupportedConstruct(f"signed field {ht['name']}.{f[0]}")
                fields.append((f[0], f[1]))
            self.htypes[ht["name"]] = HeaderType(ht["name"], fields, sum(w for _, w in fields))
        self.headers = []          # (name, HeaderType, metadata)
        self.hidx: dict[str, int] = {}
        for h in js["headers"]:
            self.hidx[h["name"]] = len(self.headers)
            self.headers.append((h["name"], self.htypes[h["header_type"]], h["metadata"]))
        self.fidx: dict[tuple[str, str], tuple[int, int, int]] = {}
        for hi, (name, ht, _) in enumerate(self.headers):
            for fi, (fname, w) in enumerate(ht.fields):
                self.fidx[(name, fname)] = (hi, fi, w)
        self.errors = {e[0]: e[1] for e in js.get("errors", [])}
        self.sm = self._std_meta_index()
        self.meters: dict[str, MeterArray] = {}
        for m in js.get("meter_arrays", []):
            if m.get("is_direct"):
                raise UnsupportedConstruct(f"direct meter {m['name']}")
            if m.get("rate_count", 2) != 2:
                raise UnsupportedConstruct(f"meter {m['name']} with {m['rate_count']} rates (2 supported)")
            self.meters[m["name"]] = MeterArray(m["name"], m["size"], m["type"] == "packets")
        self.actions = {}
        self.action_by_id = {}
        for a in js["actions"]:
            act = Action(self, a)
            self.actions[a["name"]] = act
            self.action_by_id[a["id"]] = act
        self.counters: dict[str, list[list[int]]] = {}
        self.counter_info = {}
        for c in js.get("counter_arrays", []):
            self.counter_info[c["name"]] = c
            if not c.get("is_direct"):
                self.counters[c["name"]] = [[0, 0] for _ in range(c["size"])]
        self.registers = {r["name"]: [0] * r["size"] for r in js.get("register_arrays", [])}
        self.register_width = {r["name"]: r["bitwidth"] for r in js.get("register_arrays", [])}
        self.calcs = {c["name"]: self._calculation(c) for c in js.get("calculations", [])}
        self.verify_checksums, self.update_checksums = [], []
        for ck in js.get("checksums", []):
            if ck.get("type", "generic") != "generic":
                raise UnsupportedConstruct(f"checksum {ck['name']} of type {ck.get('type')}")
            entry = (self._field_ref(ck["target"]), self.calcs[ck["calculation"]],
                     self.expr(ck["if_cond"]) if ck.get("if_cond") else None)
            if ck.get("verify", True):
                self.verify_checksums.append(entry)
            if ck.get("update", True):
                self.update_checksums.append(entry)
        if len(js["parsers"]) != 1 or len(js["deparsers"]) != 1:
            raise UnsupportedConstruct("more than one parser or deparser")
        self.parser = Parser(self, js["parsers"][0])
        self.deparse_order = [self.hidx[n] for n in js["deparsers"][0]["order"]]
        self.tables: dict[str, Table] = {}
        self.pipelines = {}
        for p in js["pipelines"]:
            self.pipelines[p["name"]] = Control(self, p)
        if set(self.pipelines) != {"ingress", "egress"}:
            raise UnsupportedConstruct(f"pipelines {sorted(self.pipelines)} (v1model has ingress, egress)")

    def _std_meta_index(self) -> dict[str, tuple[int, int, int]]:
        if "standard_metadata" not in self.hidx:
            raise UnsupportedConstruct("no standard_metadata: only v1model programs run here")
        return {f: self.fidx[("standard_metadata", f)]
                for _, f in [("", n) for n, _ in self.headers[self.hidx["standard_metadata"]][1].fields]}

    def _field_ref(self, ref) -> tuple[int, int, int]:
        hname, fname = ref
        if fname == "$valid$":
            return (self.hidx[hname], -1, 1)
        try:
            return self.fidx[(hname, fname)]
        except KeyError:
            raise PipelineError(f"unknown field {hname}.{fname}") from None

    # -- expressions ----------------------------------------------------------------
    # An expression becomes Python source, compiled once into one function:
    # no per-node calls at packet time.
    _BINARY = {"+", "-", "*", "<<", ">>", "&", "|", "^", "==", "!=", ">", ">=", "<", "<="}

    def expr(self, tv) -> Callable:
        """Compile a type-value object to f(pkt, data) -> int | bool."""
        return eval(f"lambda p, d: {self.expr_src(tv)}", {"_tcm": _two_comp_mod})  # noqa: S307

    def expr_src(self, tv) -> str:
        t, v = tv["type"], tv["value"]
        if t == "field":
            hi, fi, _ = self._field_ref(v)
            return f"int(p.valid[{hi}])" if fi < 0 else f"p.vals[{hi}][{fi}]"
        if t == "hexstr":
            return str(_hex(v))
        if t == "bool":
            return "True" if v else "False"
        if t in ("runtime_data", "local"):
            return f"d[{int(v)}]"
        if t == "header":
            return str(self.hidx[v])
        if t == "expression":
            # p4c nests: {"type": "expression", "value": {"type": "expression", "value": {op...}}}
            return self._op_src(v) if "op" in v else self.expr_src(v)
        raise UnsupportedConstruct(f"expression operand of type {t!r}")

    def _op_src(self, e) -> str:
        op = e["op"]
        if op == "?":
            c, l, r = (self.expr_src(e[k]) for k in ("cond", "left", "right"))
            return f"(({l}) if ({c}) else ({r}))"
        if op == "valid":
            return f"p.valid[{self.hidx[e['right']['value']]}]"
        r = self.expr_src(e["right"])
        if e.get("left") is None:
            unary = {"not": "(not {})", "~": "(~{})", "-": "(-{})", "d2b": "bool({})", "b2d": "int(bool({}))"}
            if op not in unary:
                raise UnsupportedConstruct(f"unary operator {op!r}")
            return unary[op].format(r)
        l = self.expr_src(e["left"])
        if op in self._BINARY:
            return f"({l} {op} {r})"
        if op in ("and", "or"):
            return f"(bool({l}) {op} bool({r}))"
        if op == "two_comp_mod":
            return f"_tcm({l}, {r})"
        raise UnsupportedConstruct(f"operator {op!r}")

    def lvalue_src(self, tv) -> tuple[str, int]:
        """Target of an assignment as source, and its bit width."""
        while tv["type"] == "expression" and "op" not in tv["value"]:
            tv = tv["value"]
        if tv["type"] != "field":
            raise UnsupportedConstruct(f"assignment to {tv['type']!r}")
        hi, fi, w = self._field_ref(tv["value"])
        if fi < 0:
            raise PipelineError("assignment to $valid$")
        return f"p.vals[{hi}][{fi}]", w

    def lvalue(self, tv) -> Callable:
        """Compile an assignable field to set(pkt, value)."""
        target, w = self.lvalue_src(tv)
        env: dict = {}
        exec(f"def set_(p, v):\n    {target} = int(v) & {(1 << w) - 1}\n", env)  # noqa: S102
        return env["set_"]

    # -- checksums --------------------------------------------------------------
    def _calculation(self, c) -> Callable:
        if c["algo"] not in ("csum16",):
            raise UnsupportedConstruct(f"calculation {c['name']}: algorithm {c['algo']!r}")
        parts = []
        last_header = None
        payload = False
        for item in c["input"]:
            t = item["type"]
            if t == "field":
                hi, fi, w = self._field_ref(item["value"])
                parts.append((hi, fi, w))
                last_header = hi
            elif t == "hexstr":
                parts.append((None, _hex(item["value"]), item["bitwidth"]))
            elif t == "header":
                hi = self.hidx[item["value"]]
                for fi, (_, w) in enumerate(self.headers[hi][1].fields):
                    parts.append((hi, fi, w))
                last_header = hi
            elif t == "payload":
                payload = True
            else:
                raise UnsupportedConstruct(f"calculation {c['name']}: input of type {t!r}")

        def compute(p: Packet) -> int:
            acc, bits = 0, 0
            for hi, fi, w in parts:
                v = fi if hi is None else p.vals[hi][fi]
                acc = (acc << w) | v
                bits += w
            data = acc.to_bytes((bits + 7) // 8, "big") if bits else b""
            if payload:
                data += self.deparse_after(p, last_header)
            return csum16(data)
        return compute

    def deparse_after(self, p: Packet, hi: int | None) -> bytes:
        out = []
        seen = hi is None
        for h in self.deparse_order:
            if seen and p.valid[h]:
                out.append(self.pack(p, h))
            if h == hi:
                seen = True
        out.append(p.payload)
        return b"".join(out)

    def pack(self, p: Packet, hi: int) -> bytes:
        ht = self.headers[hi][1]
        acc = 0
        for v, s in zip(p.vals[hi], ht.shifts):
            acc |= v << s
        return acc.to_bytes(ht.width // 8, "big")

    # -- the packet walk (v1model) ------------------------------------------------
    def new_packet(self) -> Packet:
        p = Packet(len(self.headers))
        p.vals = [[0] * len(ht.fields) for _, ht, _ in self.headers]
        for i, (_, _, meta) in enumerate(self.headers):
            p.valid[i] = meta
        return p

    def set_sm(self, p: Packet, name: str, v: int) -> None:
        hi, fi, w = self.sm[name]
        p.vals[hi][fi] = v & ((1 << w) - 1)

    def get_sm(self, p: Packet, name: str) -> int:
        hi, fi, _ = self.sm[name]
        return p.vals[hi][fi]

    def process(self, port: int, data: bytes) -> Output | None:
        """One packet through parser, ingress, egress, deparser. None: dropped."""
        p = self.new_packet()
        self.set_sm(p, "ingress_port", port)
        self.set_sm(p, "packet_length", len(data))
        with self.lock:
            self.parser.run(p, data)
            if "parser_error" in self.sm:
                self.set_sm(p, "parser_error", p.error)
            for target, calc, cond in self.verify_checksums:
                if cond is None or cond(p, ()):
                    hi, fi, _ = target
                    if calc(p) != p.vals[hi][fi] and "checksum_error" in self.sm:
                        self.set_sm(p, "checksum_error", 1)
            self.pipelines["ingress"].run(p)
            if "mcast_grp" in self.sm and self.get_sm(p, "mcast_grp"):
                raise UnsupportedConstruct("multicast (standard_metadata.mcast_grp set)")
            egress = self.get_sm(p, "egress_spec")
            if egress == DROP_PORT:
                return None
            self.set_sm(p, "egress_port", egress)
            p.exit = False
            self.pipelines["egress"].run(p)
            if self.get_sm(p, "egress_spec") == DROP_PORT:
                return None
            for target, calc, cond in self.update_checksums:
                if cond is None or cond(p, ()):
                    hi, fi, _ = target
                    p.vals[hi][fi] = calc(p)
            out = b"".join(self.pack(p, h) for h in self.deparse_order if p.valid[h]) + p.payload
        return Output(egress, out)


def _two_comp_mod(v: int, width: int) -> int:
    v &= (1 << width) - 1
    return v - (1 << width) if v >> (width - 1) else v


def csum16(data: bytes) -> int:
    if len(data) % 2:
        data += b"\x00"
    s = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return ~s & 0xFFFF


class Parser:
    def __init__(self, prog: Program, js: dict):
        self.prog = prog
        self.states: dict[str, Callable] = {}
        for st in js["parse_states"]:
            self.states[st["name"]] = self._state(st)
        self.init = js["init_state"]
        self.too_short = prog.errors.get("PacketTooShort", 1)

    def _state(self, st) -> Callable:
        prog = self.prog
        ops = []
        for op in st["parser_ops"]:
            kind, params = op["op"], op["parameters"]
            if kind == "extract":
                if params[0]["type"] != "regular":
                    raise UnsupportedConstruct(f"parser state {st['name']}: extract to {params[0]['type']}")
                ops.append(self._extract(prog.hidx[params[0]["value"]]))
            elif kind == "set":
                setter, val = prog.lvalue(params[0]), self._value(params[1])
                ops.append(lambda p, c, s=setter, v=val: (s(p, v(p, c)), c)[1])
            elif kind == "verify":
                cond, err = prog.expr(params[0]), prog.expr(params[1])

                def verify(p, c, cond=cond, err=err):
                    if not cond(p, ()):
                        raise ParserError(err(p, ()))
                    return c
                ops.append(verify)
            elif kind == "advance":
                bits = prog.expr(params[0])

                def advance(p, c, bits=bits):
                    n = bits(p, ())
                    if n % 8:
                        raise ParserError(0)
                    data, pos = c
                    if pos + n // 8 > len(data):
                        raise ParserError(self.too_short)
                    return (data, pos + n // 8)
                ops.append(advance)
            elif kind == "primitive":
                prim = compile_primitive(prog, params[0], f"parser state {st['name']}")
                ops.append(lambda p, c, prim=prim: (prim(p, ()), c)[1])
            else:
                raise UnsupportedConstruct(f"parser state {st['name']}: operation {kind!r}")
        keys = []
        for k in st["transition_key"]:
            if k["type"] == "field":
                hi, fi, w = prog._field_ref(k["value"])
                keys.append(("f", hi, fi, w))
            elif k["type"] == "lookahead":
                keys.append(("l", k["value"][0], k["value"][1], k["value"][1]))
            else:
                raise UnsupportedConstruct(f"parser state {st['name']}: transition key {k['type']!r}")
        trans = []
        for t in st["transitions"]:
            ty = t.get("type", "hexstr")
            if ty == "default":
                trans.append((None, None, t["next_state"]))
            elif ty == "hexstr":
                trans.append((_hex(t["value"]), _hex(t["mask"]) if t.get("mask") else None, t["next_state"]))
            else:
                raise UnsupportedConstruct(f"parser state {st['name']}: transition {ty!r}")

        def key_of(p, c):
            acc = 0
            for kind, a, b, w in keys:
                nbytes = (w + 7) // 8
                if kind == "f":
                    v = int(p.valid[a]) if b < 0 else p.vals[a][b]
                else:
                    data, pos = c
                    chunk = data[pos:pos + (a + w + 7) // 8]
                    if len(chunk) * 8 < a + w:
                        raise ParserError(self.too_short)
                    total = len(chunk) * 8
                    v = (int.from_bytes(chunk, "big") >> (total - a - w)) & ((1 << w) - 1)
                acc = (acc << (8 * nbytes)) | v
            return acc

        def run(p, c):
            try:
                for op in ops:
                    c = op(p, c)
                if not trans:
                    return None, c
                k = key_of(p, c) if keys else 0
            except ParserError as e:
                # what the state extracted before the error stays parsed, as
                # in BMv2 (bytes_parsed counts each extract as it is done)
                e.cursor = c
                raise
            for value, mask, nxt in trans:
                if value is None or (k & mask if mask is not None else k) == value:
                    return nxt, c
            return None, c
        return run

    def _value(self, tv):
        if tv["type"] == "lookahead":
            raise UnsupportedConstruct("lookahead in parser set")
        return self.prog.expr(tv)

    def _extract(self, hi: int):
        ht = self.prog.headers[hi][1]
        nbytes = ht.width // 8
        if ht.width % 8:
            raise UnsupportedConstruct(f"header {ht.name} is not a whole number of bytes")
        spec = [(s, (1 << w) - 1) for (_, w), s in zip(ht.fields, ht.shifts)]

        def extract(p, c):
            data, pos = c
            if pos + nbytes > len(data):
                raise ParserError(self.too_short)
            acc = int.from_bytes(data[pos:pos + nbytes], "big")
            p.vals[hi] = [(acc >> s) & m for s, m in spec]
            p.valid[hi] = True
            return (data, pos + nbytes)
        return extract

    def run(self, p: Packet, data: bytes) -> None:
        c = (data, 0)
        state = self.init
        try:
            while state is not None:
                state, c = self.states[state](p, c)
        except ParserError as e:
            p.error = e.code
            c = e.cursor or c
        p.payload = data[c[1]:]


def compile_primitive(prog: Program, prim: dict, where: str) -> Callable:
    op, params = prim["op"], prim["parameters"]
    if op == "assign":
        if params[0]["type"] == "header":
            return _assign_header(prog, params)
        setter, value = prog.lvalue(params[0]), prog.expr(params[1])
        return lambda p, d: setter(p, value(p, d))
    if op == "assign_header":
        return _assign_header(prog, params)
    if op == "add_header":
        hi = prog.hidx[params[0]["value"]]

        def add(p, d):
            if not p.valid[hi]:
                p.valid[hi] = True
                p.vals[hi] = [0] * len(p.vals[hi])
        return add
    if op == "remove_header":
        hi = prog.hidx[params[0]["value"]]

        def remove(p, d):
            p.valid[hi] = False
        return remove
    if op == "mark_to_drop":
        def drop(p, d):
            prog.set_sm(p, "egress_spec", DROP_PORT)
            if "mcast_grp" in prog.sm:
                prog.set_sm(p, "mcast_grp", 0)
        return drop
    if op == "count":
        name = params[0]["value"]
        idx = prog.expr(params[1])

        def count(p, d):
            cell = prog.counters[name][idx(p, d)]
            cell[0] += 1
            cell[1] += prog.get_sm(p, "packet_length")
        return count
    if op == "execute_meter":
        meter, idx, setter = prog.meters[params[0]["value"]], prog.expr(params[1]), prog.lvalue(params[2])

        def execute_meter(p, d):
            setter(p, meter.execute(idx(p, d), prog.get_sm(p, "packet_length")))
        return execute_meter
    if op == "register_read":
        setter, name, idx = prog.lvalue(params[0]), params[1]["value"], prog.expr(params[2])
        return lambda p, d: setter(p, prog.registers[name][idx(p, d)])
    if op == "register_write":
        name, idx, val = params[0]["value"], prog.expr(params[1]), prog.expr(params[2])

        def rw(p, d):
            prog.registers[name][idx(p, d)] = val(p, d) & ((1 << prog.register_width[name]) - 1)
        return rw
    if op == "exit":
        def exit_(p, d):
            p.exit = True
        return exit_
    if op in ("log_msg",):
        return lambda p, d: None
    if op in ("assert", "assume"):
        cond = prog.expr(params[0])

        def check(p, d):
            if not cond(p, d):
                raise PipelineError(f"{op} failed in {where}")
        return check
    raise UnsupportedConstruct(f"primitive {op!r} in {where}")


def _assign_header(prog: Program, params) -> Callable:
    dst, src = prog.hidx[params[0]["value"]], prog.hidx[params[1]["value"]]

    def assign(p, d):
        p.valid[dst] = p.valid[src]
        p.vals[dst] = list(p.vals[src])
    return assign


class Action:
    def __init__(self, prog: Program, js: dict):
        self.name, self.id = js["name"], js["id"]
        self.params = [(r["name"], r["bitwidth"]) for r in js["runtime_data"]]
        where = f"action {self.name}"
        body = []
        for prim in js["primitives"]:
            op = prim["op"]
            if op == "_jump":
                body.append(("jump", prog.expr(prim["parameters"][0]), None))
            elif op == "_jump_if_zero":
                body.append(("jz", prog.expr(prim["parameters"][0]), prog.expr(prim["parameters"][1])))
            else:
                body.append(("op", compile_primitive(prog, prim, where), None))
        self.body = body
        self.run = self._straight_line(prog, js) or self._interpret

    def _straight_line(self, prog: Program, js: dict) -> Callable | None:
        """One function for an action of plain assignments and calls (no jumps)."""
        lines, env = [], {"_tcm": _two_comp_mod}
        for i, prim in enumerate(js["primitives"]):
            op = prim["op"]
            if op in ("_jump", "_jump_if_zero"):
                return None
            if op == "assign" and prim["parameters"][0]["type"] != "header":
                target, w = prog.lvalue_src(prim["parameters"][0])
                lines.append(f"    {target} = int({prog.expr_src(prim['parameters'][1])}) & {(1 << w) - 1}")
            else:
                env[f"_op{i}"] = self.body[i][1]
                lines.append(f"    _op{i}(p, d)")
                lines.append("    if p.exit: return")
        src = "def run(p, d):\n" + ("\n".join(lines) or "    pass") + "\n"
        exec(src, env)  # noqa: S102
        return env["run"]

    def _interpret(self, p: Packet, data: tuple) -> None:
        body = self.body
        i = 0
        while i < len(body):
            kind, a, b = body[i]
            if kind == "op":
                a(p, data)
                if p.exit:
                    return
                i += 1
            elif kind == "jump":
                i = a(p, data)
            else:
                i = b(p, data) if a(p, data) == 0 else i + 1


class Control:
    """A pipeline: tables and conditionals linked by name."""

    def __init__(self, prog: Program, js: dict):
        self.prog = prog
        self.name = js["name"]
        if js.get("action_profiles"):
            raise UnsupportedConstruct(f"action profiles in pipeline {self.name}")
        if js.get("action_calls"):
            raise UnsupportedConstruct(f"action_calls in pipeline {self.name}")
        self.nodes: dict[str, Callable] = {}
        for t in js["tables"]:
            table = Table(prog, t)
            prog.tables[t["name"]] = table
            self.nodes[t["name"]] = self._table_node(table, t)
        for c in js["conditionals"]:
            self.nodes[c["name"]] = self._cond_node(c)
        self.init = js["init_table"]

    def _table_node(self, table: Table, t: dict) -> Callable:
        nexts = t["next_tables"]
        hit_miss = "__HIT__" in nexts or "__MISS__" in nexts
        by_action = {}
        for aname, nxt in nexts.items():
            if not aname.startswith("__"):
                by_action[aname] = nxt

        def node(p):
            hit, action, data = table.apply(p)
            action.run(p, data)
            if hit_miss:
                return nexts.get("__HIT__" if hit else "__MISS__")
            return by_action.get(action.name)
        return node

    def _cond_node(self, c: dict) -> Callable:
        cond = self.prog.expr(c["expression"])
        t, f = c.get("true_next"), c.get("false_next")
        return lambda p: t if cond(p, ()) else f

    def run(self, p: Packet) -> None:
        node = self.init
        while node is not None and not p.exit:
            node = self.nodes[node](p)
