#!/usr/bin/env python3
"""Plots for docs/benchmarks.md from bench/results/*.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
RES = ROOT / "bench" / "results"
OUT = ROOT / "docs" / "img"


def save(fig, name: str) -> str:
    fig.tight_layout()
    fig.savefig(OUT / name, dpi=110)
    plt.close(fig)
    return name


def load(name: str) -> dict | None:
    p = RES / f"{name}.json"
    return json.loads(p.read_text()) if p.exists() else None


def main() -> int:
    global RES, OUT
    import argparse
    ap = argparse.ArgumentParser()
    ap.add_argument("--results", default=str(RES), help="where the benchmarks' JSON is")
    ap.add_argument("--out", default=str(OUT), help="where the plots go")
    a = ap.parse_args()
    RES, OUT = Path(a.results), Path(a.out)
    OUT.mkdir(parents=True, exist_ok=True)
    made = []
    pps = load("switch_pps")
    if pps and pps["results"]:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        names = [r["switch"] for r in pps["results"]]
        ax.bar(names, [r["pps"] for r in pps["results"]],
               color=["#4477aa", "#66ccee", "#228833", "#ee6677"][:len(names)])
        ax.tick_params(axis="x", labelsize=8)
        ax.set_ylabel("packets/s, offloaded path")
        ax.set_title(f"{pps['frame_bytes']}-byte frames, {pps['packets']} packets (rev {pps['git']})")
        made.append(save(fig, "switch_pps.png"))
    mem = load("memory")
    if mem:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        xs = [r["flows"] for r in mem["results"]]
        ax.plot(xs, [r["bytes_per_flow"] for r in mem["results"]], "o-", label="measured")
        ax.axhline(1024, color="grey", ls="--", label="target 1 KiB")
        ax.set_xscale("log")
        ax.set_xlabel("tracked flows")
        ax.set_ylabel("controller RSS per flow (bytes)")
        ax.set_ylim(0, 1400)
        ax.legend()
        ax.set_title(f"memory per flow (rev {mem['git']})")
        made.append(save(fig, "memory.png"))
    rate = load("offload_rate")
    if rate:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.hist(rate["latency"]["samples_ms"], bins=50, color="#228833")
        ax.axvline(rate["latency"]["p50_ms"], color="k", ls="--", label=f"p50 {rate['latency']['p50_ms']:.1f} ms")
        ax.axvline(rate["latency"]["p99_ms"], color="r", ls="--", label=f"p99 {rate['latency']['p99_ms']:.1f} ms")
        ax.set_xlabel("conntrack event -> both entries written (ms)")
        ax.set_ylabel("flows")
        ax.legend()
        ax.set_title(f"time-to-offload on {rate['switch']} (rev {rate['git']})")
        made.append(save(fig, "time_to_offload.png"))
    paths = load("paths")
    if paths:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        rs = paths["results"]
        ax.bar([r["mode"] for r in rs], [r["bits_per_second"] / 1e6 for r in rs],
               color=["#228833", "#66ccee", "#ee6677", "#4477aa"][:len(rs)])
        ax.set_ylabel("iperf3 TCP, Mbit/s")
        ax.set_title(f"{rs[0]['switch']}, h1 -> h2 (rev {paths['git']})")
        made.append(save(fig, "paths.png"))
    poll = load("poll_cost")
    if poll:
        fig, ax = plt.subplots(figsize=(5, 3.2))
        rs = poll["results"]
        ax.plot([r["flows"] for r in rs], [r["poll_seconds"] for r in rs], "o-", label="wall")
        ax.plot([r["flows"] for r in rs], [r["poll_cpu_seconds"] for r in rs], "s--", label="controller CPU")
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("offloaded flows (2 entries each)")
        ax.set_ylabel("one counter poll, seconds")
        ax.legend()
        ax.set_title(f"{poll['switch']} (rev {poll['git']})")
        made.append(save(fig, "poll_cost.png"))
    aging = load("aging")
    if aging and aging["runs"]:
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
        for sw, color in (("bmv2", "#4477aa"), ("soft", "#ee6677")):
            rs = sorted((r for r in aging["runs"] if r["switch"] == sw), key=lambda r: r["flows"])
            if not rs:
                continue
            xs = [max(r["flows"], 100) for r in rs]   # N = 0 drawn at 100 on the log axis
            lag = [r["expiry"]["lag_over_timeout_s"] for r in rs]
            ax1.errorbar(xs, [x["p50"] for x in lag], yerr=[[0] * len(lag), [x["max"] - x["p50"] for x in lag]],
                         fmt="o-", color=color, capsize=3, label=f"{sw} (p50, bar to max)")
            ax2.plot(xs, [r["burst"]["ratio_to_fewest_flows"] for r in rs], "s-", color=color, label=sw)
        for ax, line, label, top, ylabel in (
                (ax1, 2.0, "bound: timeout + 2 s", 2.3, "expiry lag beyond the timeout (s)"),
                (ax2, 0.8, "target 0.8", 1.5, "setup rate / rate with none")):
            ax.axhline(line, color="grey", ls="--", label=label)
            ax.set_xscale("log")
            ax.set_ylim(0, top)
            ax.set_xlabel("offloaded flows being aged (0 drawn at 100)")
            ax.set_ylabel(ylabel)
            ax.legend(fontsize=7)
        fig.suptitle(f"aging on the switch's idle timeouts (rev {aging['git']})", fontsize=10)
        made.append(save(fig, "aging.png"))
    storm = load("punt_storm")
    if storm and storm["results"]:
        rs = storm["results"]
        labels = [f"{r['switch']}, flood {r['flood_rate'] / 1000:.0f}k/s\n"
                  f"{'meter ' + str(r['punt_rate']) + '/s' if r['punt_rate'] else 'no meter'}" for r in rs]
        fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(9, 3.4))
        colors = ["#228833" if r["punt_rate"] else "#ee6677" for r in rs]
        ax1.bar(labels, [r["arrivals_ok"] for r in rs], color=colors)
        ax1.axhline(rs[0]["arrivals"], color="grey", ls="--", label="connections opened")
        ax1.set_ylabel("connections set up during the flood")
        ax1.legend(fontsize=7)
        ax2.bar(labels, [r["api_p99_ms"] for r in rs], color=colors)
        ax2.axhline(100, color="grey", ls="--", label="target 100 ms")
        ax2.set_ylabel("API p99 (ms)")
        ax2.legend(fontsize=7)
        for ax in (ax1, ax2):
            ax.tick_params(axis="x", labelsize=8)
        fig.suptitle(f"SYN flood for {storm['seconds']:.0f} s from a third port, 20 connections opened "
                     f"meanwhile (rev {storm['git']})", fontsize=10)
        made.append(save(fig, "punt_storm.png"))
    runs = [r for r in (load("reroute"), load("reroute_soft")) if r and r.get("sizes")]
    if runs:
        fig, ax = plt.subplots(figsize=(6, 3.6))
        for r, color in zip(runs, ("#4477aa", "#ee6677")):
            xs = [s["behind"] for s in r["sizes"]]
            for kind, style in (("mac_change", "o-"), ("route_change", "s--")):
                ax.plot(xs, [s[kind]["p50_ms"] for s in r["sizes"]], style, color=color,
                        label=f"{r['switch']}: {kind.replace('_', ' ')} p50")
                ax.plot(xs, [s[kind]["p99_ms"] for s in r["sizes"]], style, color=color, alpha=0.4)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("flows behind the changed next hop")
        ax.set_ylabel("kernel change -> switch updated, ms")
        ax.set_title(f"faded: p99 (rev {runs[0]['git']})", fontsize=9)
        ax.legend(fontsize=7)
        made.append(save(fig, "reroute.png"))
    print("plots:", ", ".join(made) or "none (no results yet)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
