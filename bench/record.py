"""Where every benchmark writes its machine-readable result, how it takes
a median over rounds, and how it reads a process's CPU time."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def save(path: str | Path, record: dict) -> dict:
    """Write record as JSON, stamped with the git revision it measured."""
    record["git"] = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"],
                                   capture_output=True, text=True).stdout.strip()
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(record, indent=2) + "\n")
    return record


def medians(samples: list[dict], key: str, value: str, kinds) -> list[dict]:
    """Per kind (samples whose `key` is it), the sample with the median
    `value`, with every round's value under "rounds", lowest first."""
    out = []
    for kind in kinds:
        rs = sorted((r for r in samples if r[key] == kind), key=lambda r: r[value])
        out.append(dict(rs[len(rs) // 2], rounds=[r[value] for r in rs]))
    return out


TICK = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its threads (those that ended included)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / TICK
