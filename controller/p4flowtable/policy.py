"""Offload policy from an nftables ruleset (the kernel's nft_flow_offload.c).

The operator writes one ruleset, as for a Linux router with a flowtable. This
module keeps the ``flowtable`` objects and the ``flow add``/``flow offload``
statements for p4ft, and hands the rest to the kernel: the text it returns for
``nft -f`` has those parts blanked out with spaces, so every line and column
the kernel reports still points into the operator's file.

Whether a flow is offloaded is decided as the kernel's forward hook would: the
forward base chains run in priority order, rules in order; a verdict reached
before an offload statement means that statement is never reached.
"""

from __future__ import annotations

import ipaddress
import re
import socket
from dataclasses import dataclass, field
from typing import Callable, Iterable

from .core import NF_FLOW_TIMEOUT, FlowtableConfig


KEEP_CONNTRACK = "ct state!=0"


class PolicyError(ValueError):
    """A ruleset p4ft cannot take; names the place in the file."""

    def __init__(self, msg: str, line: int = 0, col: int = 0, source: str = "ruleset"):
        self.line, self.col, self.msg = line, col, msg
        where = f"{source}:{line}:{col}: " if line else f"{source}: "
        super().__init__(where + msg)


@dataclass(frozen=True, slots=True)
class Token:
    kind: str      # word, string, punct, nl
    value: str
    line: int
    col: int
    start: int
    end: int


_TOKEN_RE = re.compile(
    r"""(?P<nl>\n)|(?P<ws>[ \t\r]+)|(?P<comment>\#[^\n]*)|(?P<string>"[^"\n]*")|"""
    r"""(?P<punct>!=|==|[{};,=])|(?P<word>[^\s{};,="#]+)""")


def tokenize(text: str, source: str = "ruleset") -> list[Token]:
    tokens: list[Token] = []
    line, line_start = 1, 0
    pos = 0
    while pos < len(text):
        m = _TOKEN_RE.match(text, pos)
        if m is None:
            raise PolicyError(f"unexpected character {text[pos]!r}", line, pos - line_start + 1, source)
        kind = m.lastgroup
        if kind in ("word", "string", "punct", "nl"):
            value = m.group()
            if kind == "string":
                value = value[1:-1]
            tokens.append(Token(kind, value, line, m.start() - line_start + 1, m.start(), m.end()))
        if kind == "nl":
            line, line_start = line + 1, m.end()
        pos = m.end()
    return tokens


# -- matches -----------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class PacketView:
    """What a packet of a flow shows the forward chain."""

    nfproto: str          # ipv4 / ipv6
    l4proto: int
    saddr: ipaddress.IPv4Address | ipaddress.IPv6Address
    daddr: ipaddress.IPv4Address | ipaddress.IPv6Address
    sport: int
    dport: int
    iifname: str
    oifname: str
    ct_state: str = "established"


@dataclass(frozen=True, slots=True)
class Match:
    selector: str
    values: tuple          # any-of
    negate: bool
    test: Callable[[PacketView, object], bool]

    def __call__(self, pkt: PacketView) -> bool:
        hit = any(self.test(pkt, v) for v in self.values)
        return hit != self.negate


_PROTO_NAMES = {"tcp": 6, "udp": 17, "icmp": 1, "icmpv6": 58, "sctp": 132,
                "dccp": 33, "gre": 47, "esp": 50, "ah": 51, "udplite": 136}
_CT_STATES = {"new", "established", "related", "invalid", "untracked"}


def _proto(tok: Token, source: str) -> int:
    v = tok.value
    if v in _PROTO_NAMES:
        return _PROTO_NAMES[v]
    if v.isdigit() and int(v) < 256:
        return int(v)
    raise PolicyError(f"unknown protocol {v!r}", tok.line, tok.col, source)


def _port(tok: Token, source: str) -> tuple[int, int]:
    v = tok.value
    try:
        if "-" in v:
            lo, hi = v.split("-", 1)
            return (_one_port(lo), _one_port(hi))
        p = _one_port(v)
        return (p, p)
    except (OSError, ValueError):
        raise PolicyError(f"bad port {v!r}", tok.line, tok.col, source) from None


def _one_port(v: str) -> int:
    p = int(v) if v.isdigit() else socket.getservbyname(v)
    if not 0 <= p <= 65535:
        raise ValueError(v)
    return p


def _network(tok: Token, source: str):
    try:
        return ipaddress.ip_network(tok.value, strict=False)
    except ValueError:
        raise PolicyError(f"bad address {tok.value!r}", tok.line, tok.col, source) from None


def _in_net(attr: str):
    return lambda pkt, net: getattr(pkt, attr).version == net.version and getattr(pkt, attr) in net


def _in_range(attr: str, protos: tuple[int, ...]):
    return lambda pkt, r: (not protos or pkt.l4proto in protos) and r[0] <= getattr(pkt, attr) <= r[1]


# selector words -> (parse value, test, implied l4 protocols)
_SELECTORS: dict[tuple[str, ...], tuple] = {
    ("ip", "protocol"): (_proto, lambda p, v: p.nfproto == "ipv4" and p.l4proto == v),
    ("meta", "l4proto"): (_proto, lambda p, v: p.l4proto == v),
    ("meta", "nfproto"): (lambda t, s: t.value, lambda p, v: p.nfproto == v),
    ("ip", "saddr"): (_network, _in_net("saddr")),
    ("ip", "daddr"): (_network, _in_net("daddr")),
    ("ip6", "saddr"): (_network, _in_net("saddr")),
    ("ip6", "daddr"): (_network, _in_net("daddr")),
    ("ip6", "nexthdr"): (_proto, lambda p, v: p.nfproto == "ipv6" and p.l4proto == v),
    ("tcp", "sport"): (_port, _in_range("sport", (6,))),
    ("tcp", "dport"): (_port, _in_range("dport", (6,))),
    ("udp", "sport"): (_port, _in_range("sport", (17,))),
    ("udp", "dport"): (_port, _in_range("dport", (17,))),
    ("th", "sport"): (_port, _in_range("sport", (6, 17))),
    ("th", "dport"): (_port, _in_range("dport", (6, 17))),
    ("iifname",): (lambda t, s: t.value, lambda p, v: _ifname_match(p.iifname, v)),
    ("oifname",): (lambda t, s: t.value, lambda p, v: _ifname_match(p.oifname, v)),
    ("meta", "iifname"): (lambda t, s: t.value, lambda p, v: _ifname_match(p.iifname, v)),
    ("meta", "oifname"): (lambda t, s: t.value, lambda p, v: _ifname_match(p.oifname, v)),
    ("iif",): (lambda t, s: t.value, lambda p, v: p.iifname == v),
    ("oif",): (lambda t, s: t.value, lambda p, v: p.oifname == v),
    ("ct", "state"): (None, lambda p, v: p.ct_state == v),
}


def _ifname_match(name: str, pattern: str) -> bool:
    return name.startswith(pattern[:-1]) if pattern.endswith("*") else name == pattern


def _ct_state(tok: Token, source: str) -> str:
    if tok.value not in _CT_STATES:
        raise PolicyError(f"unknown ct state {tok.value!r}", tok.line, tok.col, source)
    return tok.value


# -- rules, chains, tables ---------------------------------------------------

VERDICTS = {"accept", "drop", "reject", "return", "continue", "queue"}


@dataclass(slots=True)
class Rule:
    matches: list[Match]
    offload: str | None = None        # flowtable name
    verdict: str | None = None        # accept/drop/.../jump/goto
    target: str | None = None         # chain for jump/goto
    error: PolicyError | None = None  # p4ft cannot evaluate this rule
    line: int = 0


@dataclass(slots=True)
class Chain:
    name: str
    hook: str | None = None
    type: str | None = None
    priority: int = 0
    policy: str = "accept"
    rules: list[Rule] = field(default_factory=list)


@dataclass(slots=True)
class Table:
    family: str
    name: str
    chains: dict[str, Chain] = field(default_factory=dict)
    flowtables: dict[str, FlowtableConfig] = field(default_factory=dict)


_PRIORITY_NAMES = {"raw": -300, "mangle": -150, "dstnat": -100, "filter": 0,
                   "security": 50, "srcnat": 100}


class _Parser:
    def __init__(self, text: str, source: str):
        self.text, self.source = text, source
        self.toks = tokenize(text, source)
        self.i = 0
        # spans hidden from the kernel, and the text put at the start of each
        self.blank: list[tuple[int, int, str]] = []
        self.tables: list[Table] = []

    # token helpers
    def err(self, msg: str, tok: Token | None = None) -> PolicyError:
        tok = tok or self.peek() or (self.toks[-1] if self.toks else None)
        return PolicyError(msg, tok.line if tok else 0, tok.col if tok else 0, self.source)

    def peek(self) -> Token | None:
        return self.toks[self.i] if self.i < len(self.toks) else None

    def next(self, what: str = "more input") -> Token:
        tok = self.peek()
        if tok is None:
            raise self.err(f"unexpected end of file, expected {what}")
        self.i += 1
        return tok

    def expect(self, value: str) -> Token:
        tok = self.next(repr(value))
        if tok.value != value or tok.kind == "string":
            raise self.err(f"expected {value!r}, got {tok.value!r}", tok)
        return tok

    def skip_seps(self) -> None:
        while self.peek() and (self.peek().kind == "nl" or self.peek().value == ";"):
            self.i += 1

    def word(self, what: str) -> Token:
        tok = self.next(what)
        if tok.kind not in ("word", "string"):
            raise self.err(f"expected {what}, got {tok.value!r}", tok)
        return tok

    def statement_tokens(self) -> list[Token]:
        """Tokens up to the end of a statement (newline or ';' outside braces)."""
        out, depth = [], 0
        while (tok := self.peek()) is not None:
            if depth == 0 and (tok.kind == "nl" or tok.value == ";" or tok.value == "}"):
                break
            if tok.value == "{":
                depth += 1
            elif tok.value == "}":
                depth -= 1
            out.append(self.next())
        if depth:
            raise self.err("unbalanced '{'")
        return out

    def skip_block(self) -> None:
        self.expect("{")
        depth = 1
        while depth:
            tok = self.next("'}'")
            depth += {"{": 1, "}": -1}.get(tok.value, 0) if tok.kind == "punct" else 0

    # grammar
    def parse(self) -> None:
        while True:
            self.skip_seps()
            tok = self.peek()
            if tok is None:
                return
            if tok.value == "flush" or tok.value == "delete" or tok.value == "destroy":
                self.statement_tokens()
            elif tok.value == "table":
                self.table()
            elif tok.value in ("include", "define"):
                raise self.err(f"'{tok.value}' is not supported: give p4ft the whole ruleset in one file", tok)
            else:
                raise self.err(f"expected 'table', got {tok.value!r}", tok)

    def table(self) -> None:
        self.expect("table")
        fam_tok = self.word("table family or name")
        if fam_tok.value in ("ip", "ip6", "inet", "arp", "bridge", "netdev"):
            name_tok = self.word("table name")
            family = fam_tok.value
        else:
            name_tok, family = fam_tok, "ip"
        table = Table(family, name_tok.value)
        self.expect("{")
        while True:
            self.skip_seps()
            tok = self.next("'}'")
            if tok.value == "}":
                break
            if tok.value == "flowtable":
                self.flowtable(table, tok)
            elif tok.value == "chain":
                self.chain(table)
            elif tok.value in ("set", "map", "counter", "quota", "ct", "limit", "secmark", "synproxy"):
                self.statement_tokens_until_block()
            elif tok.value in ("flags", "comment"):
                self.statement_tokens()
            else:
                raise self.err(f"unexpected {tok.value!r} in table {table.name!r}", tok)
        self.tables.append(table)

    def statement_tokens_until_block(self) -> None:
        while self.peek() and self.peek().value != "{":
            self.next()
        self.skip_block()

    def flowtable(self, table: Table, start: Token) -> None:
        name = self.word("flowtable name").value
        if name in table.flowtables:
            raise self.err(f"flowtable {name!r} defined twice", start)
        self.expect("{")
        devices: list[str] = []
        hook = None
        while True:
            self.skip_seps()
            tok = self.next("'}'")
            if tok.value == "}":
                end = tok.end
                break
            if tok.value == "hook":
                hook_tok = self.word("hook name")
                hook = hook_tok.value
                if hook != "ingress":
                    raise self.err(f"flowtable hook must be 'ingress', got {hook!r}", hook_tok)
                self.expect("priority")
                self.priority()
            elif tok.value == "devices":
                self.expect("=")
                if self.peek() and self.peek().value == "{":
                    devices.extend(t.value for t in self.set_items())
                else:
                    devices.append(self.word("device name").value)
            elif tok.value in ("counter",):
                pass
            elif tok.value == "flags":
                self.statement_tokens()   # 'offload': p4ft always offloads to the switch
            else:
                raise self.err(f"unexpected {tok.value!r} in flowtable {name!r}", tok)
        if hook is None:
            raise self.err(f"flowtable {name!r} has no 'hook ingress priority ...'", start)
        if not devices:
            raise self.err(f"flowtable {name!r} has no devices", start)
        table.flowtables[name] = FlowtableConfig(name, tuple(devices), NF_FLOW_TIMEOUT, table.family)
        self.blank.append((start.start, end, ""))

    def priority(self) -> int:
        tok = self.word("priority")
        v = tok.value
        base = re.fullmatch(r"([a-z]+)([+-]\d+)?", v)
        if base and base.group(1) in _PRIORITY_NAMES:
            return _PRIORITY_NAMES[base.group(1)] + int(base.group(2) or 0)
        try:
            return int(v)
        except ValueError:
            raise self.err(f"bad priority {v!r}", tok) from None

    def set_items(self) -> list[Token]:
        self.expect("{")
        items = []
        while True:
            tok = self.next("'}'")
            if tok.value == "}":
                return items
            if tok.kind == "nl" or tok.value == ",":
                continue
            if tok.kind not in ("word", "string"):
                raise self.err(f"unexpected {tok.value!r} in set", tok)
            items.append(tok)

    def chain(self, table: Table) -> None:
        name = self.word("chain name").value
        chain = Chain(name)
        self.expect("{")
        while True:
            self.skip_seps()
            tok = self.peek()
            if tok is None:
                raise self.err(f"chain {name!r} is not closed")
            if tok.value == "}":
                self.next()
                break
            if tok.value == "type":
                self.next()
                chain.type = self.word("chain type").value
                self.expect("hook")
                chain.hook = self.word("hook").value
                if self.peek() and self.peek().value == "device":
                    self.next()
                    self.word("device")
                self.expect("priority")
                chain.priority = self.priority()
            elif tok.value == "policy":
                self.next()
                chain.policy = self.word("policy").value
            elif tok.value == "comment":
                self.statement_tokens()
            else:
                chain.rules.append(self.rule(self.statement_tokens(), table))
        table.chains[name] = chain

    def rule(self, toks: list[Token], table: Table) -> Rule:
        rule = Rule([], line=toks[0].line if toks else 0)
        i = 0
        try:
            while i < len(toks):
                i = self.rule_item(toks, i, rule, table)
        except PolicyError as e:
            rule.error = e
        return rule

    def rule_item(self, toks: list[Token], i: int, rule: Rule, table: Table) -> int:
        t = toks[i]
        v = t.value
        if v == "flow" and i + 1 < len(toks) and toks[i + 1].value in ("add", "offload"):
            if i + 2 >= len(toks) or not toks[i + 2].value.startswith("@"):
                raise self.err("expected '@flowtable' after 'flow add'", toks[min(i + 2, len(toks) - 1)])
            ft = toks[i + 2].value[1:]
            if ft not in table.flowtables:
                raise self.err(f"flowtable {ft!r} is not defined in table {table.name!r}", toks[i + 2])
            rule.offload = ft
            self.blank.append((t.start, toks[i + 2].end, KEEP_CONNTRACK))
            return i + 3
        if v in VERDICTS:
            rule.verdict = v
            j = i + 1
            if v == "reject":  # 'reject with ...'
                while j < len(toks) and toks[j].kind != "punct":
                    j += 1
            return j
        if v in ("jump", "goto"):
            if i + 1 >= len(toks):
                raise self.err(f"'{v}' needs a chain", t)
            rule.verdict, rule.target = v, toks[i + 1].value
            return i + 2
        if v == "counter":
            j = i + 1
            while j + 1 < len(toks) and toks[j].value in ("packets", "bytes"):
                j += 2
            return j
        for sel, (parse, test) in _SELECTORS.items():
            n = len(sel)
            if tuple(x.value for x in toks[i:i + n]) == sel:
                return self.match(toks, i + n, " ".join(sel), parse, test, rule)
        raise self.err(f"p4ft cannot evaluate {v!r} in a forward chain (supported: "
                       "ip protocol/saddr/daddr, ip6 nexthdr/saddr/daddr, meta l4proto/nfproto/iifname/oifname, "
                       "tcp/udp/th sport/dport, iifname, oifname, ct state, counter, "
                       "verdicts, jump/goto, flow add)", t)

    def match(self, toks, i, selector, parse, test, rule) -> int:
        if i >= len(toks):
            raise self.err(f"'{selector}' needs a value", toks[-1])
        negate = False
        if toks[i].value in ("!=", "=="):
            negate = toks[i].value == "!="
            i += 1
        values: list[Token] = []
        if i < len(toks) and toks[i].value == "{":
            i += 1
            while i < len(toks) and toks[i].value != "}":
                if toks[i].value != "," and toks[i].kind != "nl":
                    values.append(toks[i])
                i += 1
            if i >= len(toks):
                raise self.err("unclosed '{'", toks[-1])
            i += 1
        elif i < len(toks):
            values.append(toks[i])
            i += 1
            # 'ct state established,related' arrives as one word per item
            while selector == "ct state" and i + 1 < len(toks) and toks[i].value == ",":
                values.append(toks[i + 1])
                i += 2
        if not values:
            raise self.err(f"'{selector}' needs a value", toks[i - 1])
        parse = parse or _ct_state
        parsed = tuple(parse(tok, self.source) for tok in values)
        rule.matches.append(Match(selector, parsed, negate, test))
        return i


@dataclass(slots=True)
class Policy:
    """A parsed ruleset: flowtables, forward chains, and the kernel's part."""

    source: str
    text: str
    kernel_text: str
    tables: list[Table]

    @property
    def flowtables(self) -> dict[str, FlowtableConfig]:
        out = {}
        for t in self.tables:
            out.update(t.flowtables)
        return out

    def select(self, views: Iterable[PacketView]) -> str | None:
        """Flowtable a flow is offloaded to, or None.

        A flow is selected when a packet of either direction reaches an offload
        statement, as the kernel offloads on the first packet that does.
        """
        for view in views:
            ft = self._eval(view)
            if ft is not None:
                return ft
        return None

    def _eval(self, pkt: PacketView) -> str | None:
        bases = []
        for table in self.tables:
            if table.family == "ip" and pkt.nfproto != "ipv4":
                continue
            if table.family == "ip6" and pkt.nfproto != "ipv6":
                continue
            for chain in table.chains.values():
                if chain.hook == "forward" and chain.type == "filter":
                    bases.append((chain.priority, table, chain))
        bases.sort(key=lambda x: x[0])
        for _, table, chain in bases:
            verdict, ft = self._run_chain(table, chain, pkt, 0)
            if ft is not None:
                return ft
            if verdict == "drop" or verdict == "reject" or (verdict is None and chain.policy == "drop"):
                return None
        return None

    def _run_chain(self, table: Table, chain: Chain, pkt: PacketView, depth: int):
        if depth > 16:
            raise PolicyError(f"jump depth exceeded at chain {chain.name!r}", source=self.source)
        for rule in chain.rules:
            if not all(m(pkt) for m in rule.matches):
                continue
            if rule.offload is not None:
                return None, rule.offload
            if rule.verdict in ("jump", "goto"):
                verdict, ft = self._run_chain(table, table.chains[rule.target], pkt, depth + 1)
                if ft is not None or verdict in ("accept", "drop", "reject", "queue"):
                    return verdict, ft
                if rule.verdict == "goto":
                    return "return", None
                continue
            if rule.verdict in ("accept", "drop", "reject", "queue", "return"):
                return rule.verdict, None
        return None, None


def parse_ruleset(text: str, source: str = "ruleset") -> Policy:
    """Parse and check a ruleset; raises PolicyError naming line and column."""
    p = _Parser(text, source)
    p.parse()
    # Rules p4ft must evaluate are those of forward filter chains and the
    # chains they jump to; any of them it cannot evaluate is an error.
    for table in p.tables:
        seen: set[str] = set()
        todo = [c for c in table.chains.values() if c.hook == "forward" and c.type == "filter"]
        while todo:
            chain = todo.pop()
            if chain.name in seen:
                continue
            seen.add(chain.name)
            for rule in chain.rules:
                if rule.error:
                    raise rule.error
                if rule.target:
                    if rule.target not in table.chains:
                        raise PolicyError(f"chain {rule.target!r} does not exist in table {table.name!r}",
                                          rule.line, 1, source)
                    todo.append(table.chains[rule.target])
        for chain in table.chains.values():
            for rule in chain.rules:
                if rule.offload and chain.name not in seen:
                    raise PolicyError(f"'flow add @{rule.offload}' is only valid in a forward filter chain "
                                      f"(chain {chain.name!r})", rule.line, 1, source)
    names = [n for t in p.tables for n in t.flowtables]
    dup = {n for n in names if names.count(n) > 1}
    if dup:
        raise PolicyError(f"flowtable name(s) {sorted(dup)} used in more than one table", source=source)
    # The kernel's offload statement holds conntrack for the table's family
    # (nf_ct_netns_get in nft_flow_offload_init); with it gone, a ruleset
    # without NAT or ct rules would track nothing and nothing would be
    # offloaded. A ct match every packet passes (every packet has a state,
    # untracked and invalid included) holds it instead, in the statement's
    # place: 11 characters, as short as the shortest 'flow add @x'.
    chars = list(text)
    for a, b, fill in p.blank:
        for k in range(a, b):
            if chars[k] != "\n":
                chars[k] = " "
        if fill and "\n" not in text[a:a + len(fill)]:   # a statement split over lines stays blank
            chars[a:a + len(fill)] = fill
    return Policy(source, text, "".join(chars), p.tables)
