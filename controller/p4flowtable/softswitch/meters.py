"""Indexed meters: the two-rate three-colour marker of RFC 2698, as BMv2 runs it.

A cell holds two token buckets, the peak (PIR, PBS) and the committed (CIR,
CBS). A packet that finds fewer tokens in the peak bucket than it needs is
red and takes none; else it takes them, and is yellow if the committed
bucket is short, green otherwise (BMv2's Meter::execute asks the buckets in
that order). A packet needs one token on a packets meter, its length in
bytes on a bytes meter. Buckets start full. A cell never configured, or reset
by a MeterEntry without a config, colours every packet green.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

GREEN, YELLOW, RED = 0, 1, 2


@dataclass(frozen=True, slots=True)
class MeterConfig:
    """Rates in units (packets or bytes) per second, bursts in units; the
    fields of P4Runtime's MeterConfig."""
    cir: int
    cburst: int
    pir: int
    pburst: int

    def check(self) -> str | None:
        """Why P4Runtime would refuse this config, or None."""
        if min(self.cir, self.cburst, self.pir, self.pburst) < 0:
            return "meter rates and bursts cannot be negative"
        if self.cir > self.pir:
            return f"committed rate {self.cir} exceeds the peak rate {self.pir}"
        return None


class _Cell:
    __slots__ = ("config", "tokens", "last")

    def __init__(self, config: MeterConfig, now: float):
        self.config = config
        # [peak, committed], each (tokens) refilled from `last`
        self.tokens = [float(config.pburst), float(config.cburst)]
        self.last = now


class MeterArray:
    def __init__(self, name: str, size: int, packets: bool, clock=time.monotonic):
        self.name, self.size, self.packets, self.clock = name, size, packets, clock
        self.cells: dict[int, _Cell] = {}

    def set(self, index: int, config: MeterConfig | None) -> None:
        if config is None:
            self.cells.pop(index, None)
        else:
            self.cells[index] = _Cell(config, self.clock())

    def get(self, index: int) -> MeterConfig | None:
        cell = self.cells.get(index)
        return cell.config if cell else None

    def execute(self, index: int, length: int) -> int:
        cell = self.cells.get(index)
        if cell is None:
            return GREEN
        now = self.clock()
        dt, cell.last = now - cell.last, now
        cfg, tokens = cell.config, cell.tokens
        need = 1 if self.packets else length
        tokens[0] = min(float(cfg.pburst), tokens[0] + dt * cfg.pir)
        tokens[1] = min(float(cfg.cburst), tokens[1] + dt * cfg.cir)
        if tokens[0] < need:
            return RED
        tokens[0] -= need
        if tokens[1] < need:
            return YELLOW
        tokens[1] -= need
        return GREEN

    def reset(self) -> None:
        self.cells.clear()
