#!/usr/bin/env python3
"""The Tofino build's committed artifacts (make p4, make check-p4).

    artifacts.py pack  BUILD DEST [NAME=VALUE...]   compiler output in BUILD -> committed files in DEST
    artifacts.py check BUILD DEST [NAME=VALUE...]   exit 1 when DEST is not what BUILD would pack
    artifacts.py fresh DEST                         exit 1 when DEST was built from other sources

NAME=VALUE: how the build was made (CPU port, table sizes), kept in build.json
with the digest of the sources it was built from (p4src/tna and p4src/include):
a machine without the Tofino compiler can still tell a stale build.

Committed: the P4Info, the BF Runtime JSON, the context JSON and the chip
binary (gzip'd, both mostly repetition), and resources.txt, the compiler's
own resource report (resources.json) per stage. The compiler stamps every
build with a run id and a date (context JSON, binary) and numbers some BF
Runtime objects afresh; check compares with those left out.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import re
import sys
from pathlib import Path

def _gz(data: bytes) -> bytes:
    return gzip.compress(data, compresslevel=9, mtime=0)


def resources(res: dict, phv: dict) -> str:
    """Per stage: SRAMs, TCAMs, map RAMs, hash bits, exact-match crossbar
    bytes, gateways, logical tables; then the PHV containers used."""
    mau = res["resources"]["mau"]
    rows = ["stage  srams/80  tcams/24  maprams/48  hash_bits  xbar_bytes  gateways  logical_tables"]
    tot = [0] * 7
    for st in mau["mau_stages"]:
        vals = [len(st["rams"]["srams"]), len(st["tcams"]["tcams"]), len(st["map_rams"]["maprams"]),
                len(st["hash_bits"]["bits"]), len(st["xbar_bytes"]["bytes"]), len(st["gateways"]["gateways"]),
                len(st["logical_tables"]["ids"])]
        tot = [a + b for a, b in zip(tot, vals)]
        rows.append(f"{st['stage_number']:>5}  " + "  ".join(f"{v:>{w}}" for v, w in
                                                             zip(vals, (8, 8, 10, 9, 10, 8, 14))))
    rows.append("total  " + "  ".join(f"{v:>{w}}" for v, w in zip(tot, (8, 8, 10, 9, 10, 8, 14))))
    used_stages = 1 + max(st["stage_number"] for st in mau["mau_stages"] if st["logical_tables"]["ids"])
    rows.append(f"stages used: {used_stages} of {mau['nStages']}")
    used = {}
    for c in phv["containers"]:
        if c.get("slices"):
            used[c["bit_width"]] = used.get(c["bit_width"], 0) + 1
    rows.append("PHV containers used: " + ", ".join(f"{n} x {w}-bit" for w, n in sorted(used.items()))
                + " (Tofino 1: 64 + 96 + 64 of 8/16/32 bits, and 112 tagalong)")
    tables = {}
    for st in mau["mau_stages"]:
        for t in st["rams"]["srams"]:
            for u in t.get("usages", [t]):
                name = u.get("used_by", "?")
                if "flow_table" in name or "port_table" in name or "punt" in name:
                    tables[name] = tables.get(name, 0) + 1
    for name, n in sorted(tables.items()):
        rows.append(f"SRAMs of {name}: {n}")
    return "\n".join(rows) + "\n"


ROOT = Path(__file__).resolve().parents[2]


def sources_digest(files: dict[str, bytes] | None = None) -> str:
    """sha256 over the Tofino program's sources (name and content of each
    .p4 file of p4src/tna and p4src/include, in name order)."""
    if files is None:
        files = {str(p.relative_to(ROOT)): p.read_bytes()
                 for d in ("p4src/tna", "p4src/include") for p in (ROOT / d).glob("*.p4")}
    h = hashlib.sha256()
    for name in sorted(files):
        h.update(name.encode() + b"\0" + files[name] + b"\0")
    return h.hexdigest()


def packed(build: Path, info: dict) -> dict[str, bytes]:
    pipe = build / "out" / "pipe"
    info = {**info, "sources": sources_digest()}
    return {"build.json": (json.dumps(info, indent=2, sort_keys=True) + "\n").encode(),"flowtable.p4info.txtpb": (build / "flowtable.p4info.txtpb").read_bytes(),
            "bf-rt.json": (build / "bf-rt.json").read_bytes(),
            "context.json.gz": _gz((pipe / "context.json").read_bytes()),
            "tofino.bin.gz": _gz((pipe / "tofino.bin").read_bytes()),
            "resources.txt": resources(json.loads((pipe / "logs" / "resources.json").read_text()),
                                       json.loads((pipe / "logs" / "phv.json").read_text())).encode()}


def _context(data: bytes) -> dict:
    js = json.loads(data)
    for k in ("build_date", "run_id", "compile_command"):
        js.pop(k, None)
    return js


def _bfrt(data: bytes):
    """The BF Runtime JSON without its ids (32-bit hashes, some of them of
    the run) and in no particular order (the compiler's varies)."""
    def canon(x):
        if isinstance(x, dict):
            return {k: canon(v) for k, v in x.items()}
        if isinstance(x, list):
            return sorted((canon(v) for v in x), key=lambda v: json.dumps(v, sort_keys=True))
        return x
    return canon(json.loads(re.sub(rb"\b\d{9,10}\b", b"0", data)))


def _binary(data: bytes) -> bytes:
    m = re.search(rb"run_id\x00*.{0,8}?([0-9a-f]{16})", data[:4096], re.S)
    return data.replace(m.group(1), b"0" * 16, 1) if m else data


def same(name: str, a: bytes, b: bytes) -> bool:
    if name == "context.json.gz":
        return _context(gzip.decompress(a)) == _context(gzip.decompress(b))
    if name == "bf-rt.json":
        return _bfrt(a) == _bfrt(b)
    if name == "tofino.bin.gz":
        return _binary(gzip.decompress(a)) == _binary(gzip.decompress(b))
    return a == b


def main(argv: list[str]) -> int:
    if argv[1] == "fresh":
        built = json.loads((Path(argv[2]) / "build.json").read_text()).get("sources")
        if built != sources_digest():
            print(f"{argv[2]} was built from other sources than p4src/tna and p4src/include hold now")
            return 1
        return 0
    cmd, build, dest = argv[1], Path(argv[2]), Path(argv[3])
    info = {k: int(v) for k, _, v in (a.partition("=") for a in argv[4:])}
    files = packed(build, info)
    if cmd == "pack":
        dest.mkdir(parents=True, exist_ok=True)
        for name, data in files.items():
            (dest / name).write_bytes(data)
        return 0
    stale = [n for n, data in files.items() if not (dest / n).exists() or not same(n, data, (dest / n).read_bytes())]
    for n in stale:
        print(f"{dest / n}: differs from the compiler's output")
    return 1 if stale else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
