"""Offload policy: the operator's nftables ruleset, evaluated by the kernel.

In the kernel, `flow add @ft` (nft_flow_offload.c) is a statement: every packet
that reaches it offloads its connection if conntrack agrees. This kernel has no
flowtable, so p4ft gives the kernel the operator's ruleset with each
``flow add|offload @NAME`` turned into ``ct label set BIT``, BIT being NAME's
mark, and the ``flowtable`` blocks blanked. The kernel runs everything else as
written (define, include, sets, maps, vmaps, priorities, every expression and
statement); the daemon offloads a connection that carries a flowtable's mark
when the kernel's other conditions hold (CtEntry.offloadable, then the route
and device checks of the daemon's decision).

This module reads the operator's files only lexically: to find the flowtable
blocks, the offload statements, the includes it must follow, and any use of the
label bits p4ft keeps for itself. Parsing and evaluation are nft's; the
positions nft reports in the kernel's copies are mapped back to the operator's
files, so errors read file:line:col of what the operator wrote.
"""

from __future__ import annotations

import glob
import re
from dataclasses import dataclass, field
from pathlib import Path

from .core import NF_FLOW_TIMEOUT, FlowtableConfig

# Bits of the conntrack label (0..127) p4ft uses as flowtable marks, by default.
DEFAULT_LABEL_BITS = range(120, 128)
CT_LABEL_MAX = 128
NFT_INCLUDE_PATH = Path("/etc")          # nft's default include directory
CONNLABEL_CONF = Path("/etc/connlabel.conf")
MAX_INCLUDE_DEPTH = 16                   # nft's MAX_INCLUDE_DEPTH
FAMILIES = ("ip", "ip6", "inet", "arp", "bridge", "netdev")


class PolicyError(ValueError):
    """A ruleset p4ft cannot take; names the place in the operator's file."""

    def __init__(self, msg: str, line: int = 0, col: int = 0, source: str = "ruleset"):
        self.line, self.col, self.msg = line, col, msg
        where = f"{source}:{line}:{col}: " if line else f"{source}: "
        super().__init__(where + msg)


def parse_label_bits(spec: str) -> range:
    """'120-127' or '127': the ct label bits p4ft may use."""
    lo, sep, hi = spec.partition("-")
    try:
        bits = range(int(lo), int(hi if sep else lo) + 1)
    except ValueError:
        bits = range(0)
    if not bits or bits.start < 0 or bits.stop > CT_LABEL_MAX:
        raise ValueError(f"ct label bits {spec!r}: expected FIRST-LAST within 0-{CT_LABEL_MAX - 1}")
    return bits


# -- tokens ----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Token:
    kind: str      # word, string, punct, nl
    value: str
    line: int
    col: int
    start: int
    end: int


_TOKEN_RE = re.compile(
    r"""(?P<nl>\n)|(?P<ws>[ \t\r]+|\\\n)|(?P<comment>\#[^\n]*)|(?P<string>"[^"\n]*")|"""
    r"""(?P<punct>!=|==|[{};,=])|(?P<word>[^\s{};,="#]+)|(?P<other>.)""")


def tokenize(text: str) -> list[Token]:
    """nft's lexical units, as far as p4ft needs them; never fails (what p4ft
    does not understand is nft's to judge)."""
    tokens: list[Token] = []
    line, line_start = 1, 0
    for m in _TOKEN_RE.finditer(text):
        kind = m.lastgroup
        if kind in ("word", "string", "punct", "nl", "other"):
            value = m.group()[1:-1] if kind == "string" else m.group()
            tokens.append(Token(kind, value, line, m.start() - line_start + 1, m.start(), m.end()))
        if kind == "nl" or m.group() == "\\\n":
            line, line_start = line + 1, m.end()
    return tokens


# -- what the scan finds -------------------------------------------------------------
@dataclass(slots=True)
class Edit:
    """A span of the operator's text replaced in the kernel's copy."""
    start: int
    end: int
    text: str = ""        # "" blanks the span (spaces, newlines kept)
    bit_of: str = ""      # filled with `ct label set BIT` of this flowtable


@dataclass(slots=True)
class SourceFile:
    path: Path
    text: str
    edits: list[Edit] = field(default_factory=list)
    includes: dict[int, list["SourceFile"]] = field(default_factory=dict)   # edit index -> files
    kernel_name: str = ""
    kernel_text: str = ""
    spans: list[tuple[int, int, int, int]] = field(default_factory=list)   # edited: orig a,b -> kernel a,b

    def error(self, msg: str, tok: Token | None) -> PolicyError:
        return PolicyError(msg, tok.line if tok else 0, tok.col if tok else 0, str(self.path))

    def orig_col(self, line: int, col: int, end: bool = False) -> int:
        return _orig_col(self, line, col, end)


@dataclass(slots=True)
class _Offload:
    file: SourceFile
    tok: Token            # the 'flow' token
    name: str
    name_tok: Token
    table: tuple[str, str] | None
    chain: str | None


@dataclass(slots=True)
class _LabelUse:
    file: SourceFile
    tok: Token
    values: list[Token]
    defines: dict[str, list[Token]]


@dataclass(slots=True)
class _Scan:
    flowtables: dict[str, tuple[FlowtableConfig, tuple[str, str], SourceFile, Token]] = field(default_factory=dict)
    offloads: list[_Offload] = field(default_factory=list)
    label_uses: list[_LabelUse] = field(default_factory=list)
    forward_chains: set[tuple[str, str, str]] = field(default_factory=set)
    jumps: dict[tuple[str, str, str], set[str]] = field(default_factory=dict)
    defines: dict[str, list[Token]] = field(default_factory=dict)
    flushes: bool = False


class _Scanner:
    """One file's tokens: tables, chains and the constructs p4ft acts on."""

    def __init__(self, f: SourceFile, scan: _Scan, depth: int = 0, frames=()):
        self.f, self.scan, self.depth = f, scan, depth
        self.toks = tokenize(f.text)
        self.i = 0
        # ("table", (family, name)) / ("chain", name) / ("other", None); an
        # included file is read inside the blocks its include stands in
        self.frames: list[tuple[str, object]] = list(frames)

    # helpers
    def peek(self, k: int = 0) -> Token | None:
        j = self.i + k
        return self.toks[j] if j < len(self.toks) else None

    def value(self, k: int = 0) -> str | None:
        t = self.peek(k)
        return t.value if t is not None and t.kind != "string" else None

    def statement(self) -> list[Token]:
        """Tokens to the end of the statement (newline or ';' outside braces)."""
        out, depth = [], 0
        while (t := self.peek()) is not None:
            if depth == 0 and (t.kind == "nl" or t.kind == "punct" and t.value in (";", "}")):
                break
            if t.kind == "punct" and t.value == "{":
                depth += 1
            elif t.kind == "punct" and t.value == "}":
                depth -= 1
            out.append(t)
            self.i += 1
        return out

    def block(self) -> list[Token]:
        """From '{' to its matching '}', both included."""
        out, depth = [], 0
        while (t := self.peek()) is not None:
            out.append(t)
            self.i += 1
            if t.kind == "punct" and t.value == "{":
                depth += 1
            elif t.kind == "punct" and t.value == "}":
                depth -= 1
                if depth == 0:
                    return out
        raise self.f.error("'{' is not closed", out[0] if out else None)

    def table_ctx(self) -> tuple[str, str] | None:
        for kind, v in reversed(self.frames):
            if kind == "table":
                return v
        return None

    def chain_ctx(self) -> str | None:
        for kind, v in reversed(self.frames):
            if kind == "chain":
                return v
        return None

    def table_ref(self, toks: list[Token], k: int) -> tuple[tuple[str, str] | None, int]:
        """[family] table at toks[k:]; returns ((family, table), next index)."""
        if k < len(toks) and toks[k].value in FAMILIES and k + 1 < len(toks) and toks[k + 1].kind != "punct":
            return (toks[k].value, toks[k + 1].value), k + 2
        if k < len(toks) and toks[k].kind != "punct":
            return ("ip", toks[k].value), k + 1
        return None, k

    # the walk
    def run(self) -> None:
        stmt_start = True
        while (t := self.peek()) is not None:
            if t.kind == "nl" or (t.kind == "punct" and t.value == ";"):
                self.i += 1
                stmt_start = True
                continue
            if t.kind == "punct" and t.value == "}":
                if self.frames:
                    self.frames.pop()
                self.i += 1
                stmt_start = True
                continue
            if t.kind == "punct" and t.value == "{":
                self.frames.append(("other", None))
                self.i += 1
                stmt_start = True
                continue
            if stmt_start and self.statement_start(t):
                continue
            self.rule_token(t)
            stmt_start = False

    def statement_start(self, t: Token) -> bool:
        """Constructs that begin a statement; True when consumed."""
        v = t.value if t.kind == "word" else None
        in_table = bool(self.frames) and self.frames[-1][0] == "table"
        top = not self.frames
        if v in ("define", "redefine") and self.value(2) == "=":
            name = self.peek(1).value
            self.i += 3
            self.scan.defines[name] = self.statement()
            return True
        if v == "include":
            self.include()
            return True
        if v in ("flush", "delete", "destroy") and top:
            toks = self.statement()
            words = [x.value for x in toks]
            if v == "flush" and len(words) > 1 and words[1] in ("ruleset", "table"):
                self.scan.flushes = True
            if len(words) > 1 and words[1] == "flowtable":   # p4ft's, not the kernel's
                self.f.edits.append(Edit(toks[0].start, toks[-1].end))
            return True
        if v in ("add", "create") and top and self.value(1) == "flowtable":
            self.i += 2
            head = self.statement_head()
            ref, k = self.table_ref(head, 0)
            self.flowtable(t, ref, head[k] if ref and k < len(head) else None)
            return True
        if v in ("add", "create") and top and self.value(1) == "chain":
            head = self.statement_head()
            ref, k = self.table_ref(head, 2)
            if ref and k < len(head):
                self.chain_header(ref, head[k].value)
            return True
        if v in ("add", "insert", "replace") and top and self.value(1) == "rule":
            toks = self.statement()
            ref, k = self.table_ref(toks, 2)
            chain = toks[k].value if ref and k < len(toks) else None
            self.frames += [("table", ref), ("chain", chain)]
            for tok in toks[k + 1:]:
                self.rule_token(tok, toks)
            del self.frames[-2:]
            return True
        if v in ("table",) or (v in ("add", "create") and top and self.value(1) == "table"):
            if v != "table":
                self.i += 1
            self.i += 1
            head = self.statement_head()
            ref, _ = self.table_ref(head, 0)
            if self.value() == "{" and ref is not None:
                self.i += 1
                self.frames.append(("table", ref))
            return True
        if v == "chain" and in_table:
            self.i += 1
            name = self.peek()
            if name is None:
                return True
            self.i += 1
            if self.value() == "{":
                self.i += 1
                self.frames.append(("chain", name.value))
                self.chain_header(self.table_ctx(), name.value)
            return True
        if v == "flowtable" and in_table:
            self.i += 1
            name = self.peek()
            self.i += 1
            self.flowtable(t, self.table_ctx(), name)
            return True
        return False

    def statement_head(self) -> list[Token]:
        """Words up to a '{' or the end of the statement (the '{' is left)."""
        out = []
        while (t := self.peek()) is not None and not (t.kind == "nl" or t.kind == "punct" and t.value in "{;}"):
            out.append(t)
            self.i += 1
        return out

    def chain_header(self, table: tuple[str, str] | None, chain: str) -> None:
        """Notes a base chain of the forward hook: its 'type ... hook forward'
        follows the '{' (block form and 'add chain ... { ... }' alike)."""
        j, depth = self.i, 0
        while j < len(self.toks):
            t = self.toks[j]
            if t.kind == "punct" and t.value in "{}":
                depth += 1 if t.value == "{" else -1
                if depth < 0 or (depth == 0 and t.value == "}"):
                    break
            if t.value == "hook" and j + 1 < len(self.toks):
                if self.toks[j + 1].value == "forward" and table is not None:
                    self.scan.forward_chains.add((*table, chain))
                break
            j += 1

    def rule_token(self, t: Token, toks: list[Token] | None = None) -> None:
        """Inside rules: offload statements, jumps, ct label uses."""
        toks = toks if toks is not None else self.toks
        k = toks.index(t) if toks is not self.toks else self.i
        nxt = lambda n: toks[k + n] if k + n < len(toks) else None  # noqa: E731
        if t.value == "flow" and nxt(1) is not None and nxt(1).value in ("add", "offload"):
            name_tok = nxt(2)
            if name_tok is None or not name_tok.value.startswith("@"):
                raise self.f.error(f"expected '@flowtable' after 'flow {nxt(1).value}'", name_tok or t)
            self.scan.offloads.append(_Offload(self.f, t, name_tok.value[1:], name_tok,
                                               self.table_ctx(), self.chain_ctx()))
            self.f.edits.append(Edit(t.start, name_tok.end, bit_of=name_tok.value[1:]))
            if toks is self.toks:
                self.i += 3
            return
        if t.value in ("jump", "goto") and nxt(1) is not None:
            table, chain = self.table_ctx(), self.chain_ctx()
            if table is not None and chain is not None:
                self.scan.jumps.setdefault((*table, chain), set()).add(nxt(1).value)
        if t.value == "ct" and nxt(1) is not None and nxt(1).value == "label":
            j = k + 2
            while j < len(toks) and toks[j].value in ("set", "==", "!="):
                j += 1
            values = []
            if j < len(toks) and toks[j].value == "{":
                j += 1
                while j < len(toks) and toks[j].value != "}":
                    if toks[j].kind in ("word", "string"):
                        values.append(toks[j])
                    j += 1
            elif j < len(toks):
                values.append(toks[j])
            self.scan.label_uses.append(_LabelUse(self.f, t, values, dict(self.scan.defines)))
        if toks is self.toks:
            self.i += 1

    def flowtable(self, start: Token, table: tuple[str, str] | None, name_tok: Token | None) -> None:
        if name_tok is None or name_tok.kind == "punct":
            raise self.f.error("expected a flowtable name", name_tok or start)
        if self.value() != "{":
            raise self.f.error(f"expected '{{' after flowtable {name_tok.value!r}", self.peek() or name_tok)
        body = self.block()
        name = name_tok.value
        if table is None:
            raise self.f.error(f"flowtable {name!r} is not inside a table", start)
        if name in self.scan.flowtables:
            raise self.f.error(f"flowtable {name!r} defined twice (p4ft names flowtables across tables)", start)
        cfg = _flowtable_body(self.f, name_tok, table, body[1:-1], self.scan.defines)
        self.scan.flowtables[name] = (cfg, table, self.f, start)
        self.f.edits.append(Edit(start.start, body[-1].end))

    def include(self) -> None:
        inc = self.peek()
        self.i += 1
        arg = self.peek()
        if arg is None or arg.kind != "string":
            raise self.f.error("expected a quoted file name after 'include'", arg or inc)
        self.i += 1
        if self.depth >= MAX_INCLUDE_DEPTH:
            raise self.f.error("include nested too deeply", inc)
        files = []
        for path in _resolve_include(arg.value, self.f.path.parent, self.f, arg):
            sub = SourceFile(path, _read(path, self.f, arg))
            _Scanner(sub, self.scan, self.depth + 1, self.frames).run()
            files.append(sub)
        self.f.edits.append(Edit(inc.start, arg.end))
        self.f.includes[len(self.f.edits) - 1] = files


def _flowtable_body(f: SourceFile, name_tok: Token, table, body: list[Token], defines) -> FlowtableConfig:
    """hook ingress priority P; devices = { ... }; flags offload; counter"""
    name = name_tok.value
    stmts, cur = [], []
    depth = 0
    for t in body:
        if t.kind == "punct" and t.value == "{":
            depth += 1
        elif t.kind == "punct" and t.value == "}":
            depth -= 1
        if depth == 0 and (t.kind == "nl" or t.value == ";" and t.kind == "punct"):
            if cur:
                stmts.append(cur)
            cur = []
        else:
            cur.append(t)
    if cur:
        stmts.append(cur)
    hook, devices = None, []
    for st in stmts:
        key = st[0].value
        if key == "hook":
            if len(st) < 2 or st[1].value != "ingress":
                raise f.error(f"flowtable hook must be 'ingress', got {st[1].value if len(st) > 1 else ''!r}",
                              st[1] if len(st) > 1 else st[0])
            if len(st) < 4 or st[2].value != "priority":
                raise f.error("expected 'priority' after 'hook ingress'", st[2] if len(st) > 2 else st[1])
            hook = st[1]
        elif key == "devices":
            if len(st) < 3 or st[1].value != "=":
                raise f.error("expected 'devices = { ... }'", st[0])
            for t in st[2:]:
                if t.kind in ("word", "string"):
                    devices.extend(_expand(t, defines, f))
        elif key in ("flags", "counter"):
            pass      # 'flags offload': p4ft always offloads to the switch
        else:
            raise f.error(f"unexpected {key!r} in flowtable {name!r}", st[0])
    if hook is None:
        raise f.error(f"flowtable {name!r} has no 'hook ingress priority ...'", name_tok)
    if not devices:
        raise f.error(f"flowtable {name!r} has no devices", name_tok)
    return FlowtableConfig(name, tuple(dict.fromkeys(devices)), NF_FLOW_TIMEOUT, table[0])


def _expand(t: Token, defines: dict[str, list[Token]], f: SourceFile, depth: int = 0) -> list[str]:
    """A word, with $variables replaced by their define's words."""
    if t.kind == "word" and t.value.startswith("$"):
        value = defines.get(t.value[1:])
        if value is None or depth > 16:
            raise f.error(f"undefined variable {t.value!r}", t)
        out = []
        for v in value:
            if v.kind in ("word", "string"):
                out.extend(_expand(v, defines, f, depth + 1))
        return out
    return [t.value]


def _resolve_include(name: str, base: Path, f: SourceFile, tok: Token) -> list[Path]:
    """Files an include names. Relative names are taken from the including
    file's directory; a bare name not found there is looked for in nft's
    default include directory. Wildcards match in sorted order, and may match
    nothing, as in nft."""
    wildcard = any(c in name for c in "*?[")
    candidates = [Path(name)] if name.startswith("/") else [base / name]
    if not name.startswith(("/", "./", "../")):
        candidates.append(NFT_INCLUDE_PATH / name)
    for c in candidates:
        matches = sorted(Path(p) for p in glob.glob(str(c))) if wildcard else ([c] if c.exists() else [])
        matches = [m for m in matches if not m.is_dir()]
        if matches or (wildcard and c is candidates[-1]):
            return matches
    raise f.error(f"include file {name!r} not found (looked in {', '.join(str(c.parent) for c in candidates)})",
                  tok)


def _read(path: Path, f: SourceFile | None, tok: Token | None) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as e:
        if f is None:
            raise PolicyError(f"cannot read the ruleset: {e}", source=str(path)) from None
        raise f.error(f"cannot read {str(path)!r}: {e}", tok) from None


def _connlabels() -> dict[str, int]:
    """Label names of connlabel.conf ('BIT NAME' lines), as nft reads them."""
    out = {}
    try:
        for line in CONNLABEL_CONF.read_text().splitlines():
            parts = line.split("#", 1)[0].split()
            if len(parts) >= 2 and parts[0].isdigit():
                out[parts[1]] = int(parts[0])
    except OSError:
        pass
    return out


# -- the result ------------------------------------------------------------------------
@dataclass(slots=True)
class Ruleset:
    """The operator's ruleset: p4ft's flowtables, their marks, the kernel's copy."""

    source: Path
    files: list[SourceFile]                 # the main file first, then its includes
    flowtables: dict[str, FlowtableConfig]  # in the order they are defined
    marks: dict[str, int]                   # flowtable -> ct label bit
    flushes: bool                           # the file flushes what it replaces

    def select(self, labels: int) -> str | None:
        """The flowtable whose mark a connection carries. With two marks the
        first flowtable defined wins (the kernel offloads at the first
        statement a packet reaches; p4ft cannot tell which that was)."""
        if labels:
            for name, bit in self.marks.items():
                if labels >> bit & 1:
                    return name
        return None

    def render(self, directory: Path) -> Path:
        """Write the kernel's copies into `directory` (includes name each
        other by absolute path); returns the main one, for nft -f."""
        for i, f in enumerate(self.files):
            f.kernel_name = str(directory / f"{i}-{f.path.name}")
        for f in self.files:
            _render(f, self.marks)
            Path(f.kernel_name).write_text(f.kernel_text)
        return Path(self.files[0].kernel_name)

    def map_nft_message(self, msg: str) -> str:
        """nft's messages about the kernel's copies, about the operator's files:
        paths, lines, columns, and the quoted line with its marker."""
        by_name = {f.kernel_name: f for f in self.files}
        pat = re.compile("(" + "|".join(re.escape(p) for p in by_name) + r"):(\d+):(\d+)-(\d+):")
        lines, out, i = msg.splitlines(), [], 0
        while i < len(lines):
            found = []

            def sub(m: re.Match) -> str:
                f, ln = by_name[m.group(1)], int(m.group(2))
                c1, c2 = f.orig_col(ln, int(m.group(3))), f.orig_col(ln, int(m.group(4)), end=True)
                found.append((f, ln, c1, c2))
                return f"{f.path}:{ln}:{c1}-{c2}:"
            line = pat.sub(sub, lines[i]) if by_name else lines[i]
            out.append(line)
            i += 1
            quoted = i + 1 < len(lines) and lines[i + 1].strip() and set(lines[i + 1].strip()) <= set("^~")
            if found and quoted and not line.startswith("In file included from"):
                f, ln, c1, c2 = found[-1]
                src = f.text.split("\n")[ln - 1]
                out.append(src)
                out.append("".join("\t" if ch == "\t" else " " for ch in src[:c1 - 1]) + "^" * max(1, c2 - c1 + 1))
                i += 2
        return "\n".join(out)


def _render(f: SourceFile, marks: dict[str, int]) -> None:
    """The kernel's copy of one file, and the map of its edited spans."""
    parts, pos, kpos = [], 0, 0
    f.spans = []
    for idx, e in sorted(enumerate(f.edits), key=lambda x: x[1].start):
        parts.append(f.text[pos:e.start])
        kpos += e.start - pos
        span = f.text[e.start:e.end]
        blank = "".join(c if c == "\n" else " " for c in span)
        if idx in f.includes:
            text = "; ".join(f'include "{s.kernel_name}"' for s in f.includes[idx]) or blank
        elif e.bit_of:
            stmt = f"ct label set {marks[e.bit_of]}"
            # the same lines; the same columns where the statement is long enough
            text = stmt + blank[len(stmt):] if "\n" not in span[:len(stmt)] else stmt + span.count("\n") * "\n"
        else:
            text = blank
        parts.append(text)
        f.spans.append((e.start, e.end, kpos, kpos + len(text)))
        kpos += len(text)
        pos = e.end
    parts.append(f.text[pos:])
    f.kernel_text = "".join(parts)


def _line_starts(text: str) -> list[int]:
    return [0] + [m.end() for m in re.finditer("\n", text)]


def _orig_col(f: SourceFile, line: int, col: int, end: bool = False) -> int:
    """The operator's column for a column of the kernel's copy (1-based; a
    column inside a replaced span maps to that span's first or last)."""
    ks, os_ = _line_starts(f.kernel_text), _line_starts(f.text)
    if not 0 < line <= min(len(ks), len(os_)):
        return col
    k = ks[line - 1] + col - 1
    o = k
    for a, b, ka, kb in f.spans:
        if k < ka:
            break
        o = (b - 1 if end else a) if k < kb else k - kb + b
    return max(1, o - os_[line - 1] + 1)


def read_ruleset(path: str | Path, label_bits: range = DEFAULT_LABEL_BITS,
                 marks: dict[str, int] | None = None) -> Ruleset:
    """Read the operator's ruleset (and its includes); check p4ft's parts;
    give each flowtable its mark, keeping those of `marks` (the flowtables of
    the ruleset loaded before) so that marked connections keep their meaning."""
    path = Path(path)
    main = SourceFile(path, _read(path, None, None))
    scan = _Scan()
    _Scanner(main, scan).run()
    files = _all_files(main)
    flowtables = {name: v[0] for name, v in scan.flowtables.items()}
    _check_offloads(scan)
    new_marks = assign_marks(list(flowtables), label_bits, marks or {})
    _check_label_uses(scan, new_marks, label_bits)
    return Ruleset(path, files, flowtables, new_marks, scan.flushes)


def _all_files(f: SourceFile) -> list[SourceFile]:
    out = [f]
    for idx in sorted(f.includes):
        for sub in f.includes[idx]:
            out.extend(_all_files(sub))
    return out


def _check_offloads(scan: _Scan) -> None:
    """As the kernel: the flowtable must exist in the rule's table
    (nft_flow_offload_init), and the rule sit where the forward hook reaches
    it (nft_flow_offload_validate)."""
    reach: set[tuple[str, str, str]] = set()
    todo = list(scan.forward_chains)
    while todo:
        c = todo.pop()
        if c in reach:
            continue
        reach.add(c)
        todo.extend((c[0], c[1], n) for n in scan.jumps.get(c, ()))
    for o in scan.offloads:
        ft = scan.flowtables.get(o.name)
        if ft is None or (o.table is not None and ft[1] != o.table):
            where = f" in table {o.table[0]} {o.table[1]}" if o.table else ""
            raise o.file.error(f"flowtable {o.name!r} is not defined{where}", o.name_tok)
        if o.table is not None and o.chain is not None and (*o.table, o.chain) not in reach:
            raise o.file.error(f"'flow add @{o.name}' is only valid in a forward chain or one it jumps to "
                               f"(chain {o.chain!r})", o.tok)


def _check_label_uses(scan: _Scan, marks: dict[str, int], label_bits: range) -> None:
    names = None
    owner = {bit: ft for ft, bit in marks.items()}
    for use in scan.label_uses:
        for v in use.values:
            if v.kind == "word" and v.value.startswith("$"):
                words = _expand(v, use.defines, use.file)
            else:
                words = [v.value]
            for w in words:
                if w.isdigit():
                    bit = int(w)
                else:
                    names = _connlabels() if names is None else names
                    bit = names.get(w)
                if bit is not None and bit in label_bits:
                    whose = f"the mark of flowtable {owner[bit]!r}" if bit in owner else "a flowtable mark"
                    raise use.file.error(
                        f"this rule uses ct label {bit}, which p4ft keeps as {whose} (its bits: "
                        f"{label_bits.start}-{label_bits.stop - 1}; choose others with --ct-label-bits)", use.tok)


def assign_marks(names: list[str], bits: range, keep: dict[str, int]) -> dict[str, int]:
    """A ct label bit per flowtable: kept for a flowtable that had one, else the
    first bit no flowtable had (so a bit freed by a removed flowtable is reused last)."""
    out = {n: keep[n] for n in names if n in keep and keep[n] in bits}
    free = [b for b in bits if b not in out.values() and b not in keep.values()]
    free += [b for b in bits if b not in out.values() and b in keep.values()]
    for n in names:
        if n not in out:
            if not free:
                raise PolicyError(f"{len(names)} flowtables, but only {len(bits)} ct label bit(s) for their marks "
                                  f"({bits.start}-{bits.stop - 1}; widen with --ct-label-bits)")
            out[n] = free.pop(0)
    return out
