"""The ruleset in the daemon: loaded at start, reloaded on request, and the
flowtables it defines bound to the switch's ports.

A reload is all or nothing, like `nft -f`: a file p4ft or nft refuses changes
nothing. Once the kernel has the new ruleset, flowtables that are gone tear
their flows down (the kernel's nf_flow_table_free on a flowtable's deletion)
and their mark is cleared from the connections that still carry it; new ones
start offloading; flows of unchanged flowtables stay in the switch, as a
kernel flowtable keeps its flows across a ruleset change.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Callable

from p4.v1 import p4runtime_pb2 as p4r

from . import nftables
from .conntrack import ConntrackMirror
from .core import FlowtableConfig, Flowtables
from .model import L4PROTO_NAMES, Flow, TeardownReason
from .offload import port_entry
from .p4info import P4Schema
from .p4runtime import Session
from .policy import DEFAULT_LABEL_BITS, Ruleset, read_ruleset

log = logging.getLogger("p4ft")


class RulesetControl:
    def __init__(self, flowtables: Flowtables, session: Session, schema: P4Schema, mirror: ConntrackMirror,
                 teardown: Callable[[Flow, TeardownReason], None], *, netns: str | None, ports: dict[str, int],
                 timeouts: dict[str, float], label_bits: range = DEFAULT_LABEL_BITS, load_kernel: bool = True):
        self.flowtables, self.session, self.schema, self.mirror = flowtables, session, schema, mirror
        self.teardown = teardown
        self.netns, self.ports, self.timeouts = netns, ports, timeouts
        self.label_bits, self.load_kernel = label_bits, load_kernel
        self.ruleset: Ruleset | None = None

    # -- what the daemon asks ------------------------------------------------
    def select(self, labels: int) -> str | None:
        return self.ruleset.select(labels) if self.ruleset is not None else None

    def mark(self, flowtable: str) -> int:
        """The label bits of a flowtable's mark (0 for one the ruleset does not define)."""
        bit = self.ruleset.marks.get(flowtable) if self.ruleset is not None else None
        return 0 if bit is None else 1 << bit

    @property
    def marks(self) -> int:
        return sum(1 << b for b in self.ruleset.marks.values()) if self.ruleset is not None else 0

    def port_updates(self, flowtables=None) -> list[p4r.Update]:
        """Port entries binding each flowtable's devices (all of them by default)."""
        tables = flowtables if flowtables is not None else [t.config for t in self.flowtables.tables.values()]
        return [p4r.Update(type=p4r.Update.INSERT, entity=p4r.Entity(
            table_entry=port_entry(self.schema, self.ports[dev], cfg.id))) for cfg in tables for dev in cfg.devices]

    def info(self, name: str) -> dict:
        t = self.flowtables.table(name)
        bit = self.ruleset.marks.get(name) if self.ruleset is not None else None
        return {"name": name, "family": t.config.family, "devices": list(t.config.devices),
                "ports": [self.ports[d] for d in t.config.devices], "timeout": t.config.timeout,
                "proto_timeouts": {L4PROTO_NAMES[p]: v for p, v in t.config.proto_timeouts.items()},
                "ct_label": bit, "flows": len(t.flows)}

    # -- loading -----------------------------------------------------------
    def read(self, path: Path) -> Ruleset:
        """Read and check a ruleset; changes nothing."""
        rs = read_ruleset(path, self.label_bits, self.ruleset.marks if self.ruleset is not None else None)
        taken: dict[str, str] = {}
        for ft in rs.flowtables.values():
            self._check_devices(ft, taken)
            ft.timeout = self.timeouts.get(ft.name, ft.timeout)
            for proto, pname in L4PROTO_NAMES.items():
                if f"{ft.name}/{pname}" in self.timeouts:
                    ft.proto_timeouts[proto] = self.timeouts[f"{ft.name}/{pname}"]
        if not rs.flushes:
            log.warning("%s flushes nothing ('flush ruleset' or 'flush table ...'): loading it again adds its "
                        "rules again, as nft -f would", path)
        return rs

    def load(self, path: Path) -> None:
        """At start, before the switch is connected: read and check it (nft
        -c), and make its flowtables; they are bound when the switch is taken
        over (port_updates), and the kernel gets it then (load_kernel_now),
        from a primary only."""
        rs = self.read(path)
        if self.load_kernel:
            nftables.load(self.netns, rs, check=True)
        for ft in rs.flowtables.values():
            self.flowtables.add_table(ft)
        self.ruleset = rs

    def load_kernel_now(self) -> None:
        if self.load_kernel and self.ruleset is not None:
            nftables.load(self.netns, self.ruleset)

    async def reload(self, path: Path) -> dict:
        """Replace the ruleset: the kernel's first (atomic; nothing changes if
        it refuses), then the flowtables that changed."""
        rs = self.read(path)
        if self.load_kernel:
            nftables.load(self.netns, rs)
        old = {n: t.config for n, t in self.flowtables.tables.items()
               if self.ruleset is not None and n in self.ruleset.flowtables}
        gone = [n for n, c in old.items() if n not in rs.flowtables or _differs(c, rs.flowtables[n])]
        added = [ft for n, ft in rs.flowtables.items() if n not in old or n in gone]
        kept = [n for n in old if n not in gone]
        old_marks = self.ruleset.marks if self.ruleset is not None else {}
        for name in gone:
            await self._remove(name, 1 << old_marks[name] if old_marks.get(name) != rs.marks.get(name) else 0)
        for name in kept:   # timeouts may have changed: they apply to flows offloaded from now on
            cfg, new = self.flowtables.tables[name].config, rs.flowtables[name]
            cfg.timeout, cfg.proto_timeouts = new.timeout, new.proto_timeouts
        self.ruleset = rs
        for ft in added:
            await self.add(ft)
        log.info("ruleset %s loaded: flowtables added %s, removed %s, kept %s", path,
                 [f.name for f in added], gone, kept)
        return {"source": str(path), "added": [f.name for f in added], "removed": gone, "kept": kept,
                "marks": dict(rs.marks)}

    def _check_devices(self, ft: FlowtableConfig, taken: dict[str, str]) -> None:
        """Every device a switch port, and in one flowtable only (taken: device -> flowtable)."""
        unknown = [d for d in ft.devices if d not in self.ports]
        if unknown:
            raise ValueError(f"flowtable {ft.name!r}: device(s) {unknown} are not switch ports (ports: "
                             f"{', '.join(f'{n}={p}' for n, p in self.ports.items()) or 'none'})")
        for d in ft.devices:
            if d in taken:
                raise ValueError(f"flowtable {ft.name!r}: device {d!r} already belongs to flowtable {taken[d]!r}")
            taken[d] = ft.name

    # -- flowtables in the switch ------------------------------------------
    async def add_runtime(self, name: str, devices: list[str], timeout: float) -> dict:
        """`p4ft flowtable add`: a flowtable outside the ruleset (no mark, so
        no flows until a ruleset names it)."""
        if name in self.flowtables.tables:
            raise ValueError(f"flowtable {name!r} exists")
        if not devices:
            raise ValueError("a flowtable needs at least one device")
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout}")
        self._check_devices(FlowtableConfig(name, tuple(devices)),
                            {d: t.config.name for t in self.flowtables.tables.values() for d in t.config.devices})
        return await self.add(FlowtableConfig(name, tuple(devices), timeout))

    async def add(self, cfg: FlowtableConfig) -> dict:
        table = self.flowtables.add_table(cfg)
        try:
            await self.session.write(self.port_updates([table.config]), f"bind flowtable {cfg.name}")
        except Exception:
            self.flowtables.remove_table(cfg.name)
            raise
        return self.info(cfg.name)

    async def remove(self, name: str) -> dict:
        info = self.info(name)
        await self._remove(name, 0)
        return info

    async def _remove(self, name: str, mark: int) -> None:
        """Flows torn down (handed back), ports unbound; connections that still
        carry `mark` have it cleared."""
        table = self.flowtables.table(name)
        for f in list(table.flows.values()):
            self.teardown(f, TeardownReason.FLOWTABLE_DELETED)
        updates = self.port_updates([table.config])
        for u in updates:
            u.type = p4r.Update.DELETE
        await self.session.write(updates, f"unbind flowtable {name}")
        self.flowtables.remove_table(name)
        if mark:
            await self.mirror.clear_labels([e for e in self.mirror.entries.values() if e.labels & mark], mark)


def _differs(a: FlowtableConfig, b: FlowtableConfig) -> bool:
    return a.devices != b.devices or a.family != b.family
