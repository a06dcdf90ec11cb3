"""p4ft: command line of p4flowtable."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import signal
import sys
from pathlib import Path

from .api import DEFAULT_SOCKET, ApiError, call, stream


def _port_map(items: list[str]) -> dict[str, int]:
    out: dict[str, int] = {}
    for item in items:
        port, sep, name = item.partition("=")
        if not sep or not port.isdigit() or not name:
            raise argparse.ArgumentTypeError(f"--port {item!r}: expected PORT=REPRESENTOR, e.g. 1=lan0")
        if name in out or int(port) in out.values():
            raise argparse.ArgumentTypeError(f"--port {item!r}: port or representor given twice")
        out[name] = int(port)
    return out


def _timeouts(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, sep, sec = item.partition("=")
        try:
            value = float(sec)
        except ValueError:
            value = -1
        table, slash, proto = name.partition("/")
        if not sep or value <= 0 or not table or (slash and proto not in ("tcp", "udp")):
            raise argparse.ArgumentTypeError(f"--timeout {item!r}: expected FLOWTABLE=SECONDS or "
                                             "FLOWTABLE/tcp=SECONDS or FLOWTABLE/udp=SECONDS (> 0)")
        out[name] = value
    return out


def _count(option: str):
    """argparse type: a whole number >= 0."""
    def parse(v: str) -> int:
        try:
            n = int(v)
        except ValueError:
            n = -1
        if n < 0:
            raise argparse.ArgumentTypeError(f"{option} {v!r}: expected a whole number >= 0")
        return n
    return parse


def cmd_daemon(args) -> int:
    import gc

    from .daemon import COLLECTOR_THRESHOLDS, DaemonConfig, Daemon
    from .policy import PolicyError, parse_label_bits
    from .p4runtime import SwitchError

    try:
        label_bits = parse_label_bits(args.ct_label_bits)
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"--ct-label-bits: {e}") from None

    from .tls import TlsConfigError, TlsFiles, plaintext_allowed

    tls = TlsFiles(args.tls_ca, args.tls_cert, args.tls_key)
    try:
        if tls.enabled:
            tls.check(need_ca=True, need_identity=False)
        else:
            plaintext_allowed(args.grpc_addr, args.insecure, "to")
    except TlsConfigError as e:
        print(f"p4ft daemon: {e}", file=sys.stderr)
        return 2
    cfg = DaemonConfig(grpc_addr=args.grpc_addr, device_id=args.device_id,
                       election_id=args.election_id, netns=args.netns,
                       ports=_port_map(args.port), ruleset=Path(args.ruleset) if args.ruleset else None,
                       socket=args.socket, timeouts=_timeouts(args.timeout),
                       poll_interval=args.poll_interval, ct_lease=args.ct_lease,
                       idle_timeouts=not args.no_idle_timeouts,
                       load_kernel_ruleset=not args.no_kernel_ruleset, label_bits=label_bits,
                       metrics_addr=args.metrics_addr, tls=tls if tls.enabled else None,
                       tls_server_name=args.tls_server_name)
    if args.read_apart_from is not None:
        cfg.read_apart_from = args.read_apart_from
    if args.punt_rate is not None:
        cfg.punt_rate = args.punt_rate
    if args.punt_burst is not None:
        cfg.punt_burst = args.punt_burst
    cfg.target = args.target
    if args.target == "tofino":
        from .tofino import TofinoBuild
        build = TofinoBuild(Path(args.device_config)) if args.device_config else TofinoBuild()
        cfg.p4info, cfg.device_config = build.p4info, build.directory
    if args.p4info:
        cfg.p4info = Path(args.p4info)
    if args.device_config and args.target != "tofino":
        cfg.device_config = Path(args.device_config)

    async def main() -> int:
        log = logging.getLogger("p4ft")
        gc.set_threshold(*COLLECTOR_THRESHOLDS)
        try:
            d = Daemon(cfg)
        except (OSError, ValueError, KeyError) as e:
            log.error("cannot start: %s", e)
            return 1
        loop = asyncio.get_running_loop()
        def on_signal(sig: signal.Signals) -> None:
            log.info("%s: handing every flow back to the kernel and stopping", sig.name)
            d.stopping.set()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, on_signal, sig)
        reloads: set[asyncio.Task] = set()

        async def reload() -> None:
            try:
                await d.reload()
            except (PolicyError, SwitchError, ValueError, OSError) as e:
                log.error("SIGHUP: ruleset not reloaded, nothing changed: %s", e)
        def on_hup() -> None:   # like nft -f of the same file, as a service's reload does
            t = loop.create_task(reload())
            reloads.add(t)
            t.add_done_callback(reloads.discard)
        loop.add_signal_handler(signal.SIGHUP, on_hup)
        try:
            await d.run()
        except (PolicyError, SwitchError, ValueError, OSError) as e:
            log.error("%s", e)
            await d.stop()
            return 1
        return 0

    return asyncio.run(main())


def _fmt_tuple(t: dict) -> str:
    return f"src={t['src']} dst={t['dst']} sport={t['sport']} dport={t['dport']}"


def _json(args) -> bool:
    return getattr(args, "output", None) == "json"


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=None if isinstance(obj, dict) and "event" in obj else 2, sort_keys=True))


def _filter(args) -> dict:
    return {k: getattr(args, k) for k in ("proto", "src", "dst", "sport", "dport", "offloaded", "flowtable")
            if getattr(args, k, None) is not None}


def cmd_flow_list(args) -> int:
    rows = call("flow_list", {"refresh": not args.cached, "filter": _filter(args)}, path=args.socket,
                timeout=10.0 if args.cached else 600.0)
    if _json(args):
        _print_json({"flows": rows})
        return 0
    for r in rows:
        pk = r.get("packets") or [0, 0]
        by = r.get("bytes") or [0, 0]
        parts = [f"{r['proto']:<5}", str(r["l4proto"]), r["state"] if r["proto"] == "tcp" else "",
                 _fmt_tuple(r["orig"])]
        if r.get("flowtable"):
            parts.append(f"packets={pk[0]} bytes={by[0]}")
        parts.append(_fmt_tuple(r["reply"]))
        if r.get("flowtable"):
            parts.append(f"packets={pk[1]} bytes={by[1]}")
        if r["offload"]:
            parts.append("[OFFLOAD]")
            age = f"{r['counters_age']}s" if r["counters_age"] is not None else "never"
            parts.append(f"flowtable={r['flowtable']} idle={r['idle']}s counters_age={age}")
            if r.get("egress"):
                # where each direction leaves: port, next hop (the neighbour), and "~" where
                # only the frames the kernel sent showed it (a routing change hands it back)
                parts.append("out=" + ",".join(f"{e['port']}:{e['neighbour'] or e['mac']}"
                                               + ("" if e["followed"] else "~") for e in r["egress"]))
        elif r.get("pending"):
            parts.append("[OFFLOAD PENDING]")
        print(" ".join(p for p in parts if p))
    print(f"p4ft: {len(rows)} flow entries, {sum(1 for r in rows if r['offload'])} offloaded",
          file=sys.stderr)
    return 0


def cmd_stats(args) -> int:
    st = call("stats", path=args.socket)
    if _json(args):
        _print_json({"stats": st})
        return 0
    for k, v in sorted(st.items()):
        print(f"{k:<32} {v}")
    return 0


def cmd_ft_list(args) -> int:
    tables = call("flowtable_list", path=args.socket)
    if _json(args):
        _print_json({"flowtables": tables})
        return 0
    for t in tables:
        mark = f"ct label {t['ct_label']}" if t["ct_label"] is not None else "no mark"
        print(f"flowtable {t['name']} family {t['family']} devices {{ {', '.join(t['devices'])} }} "
              f"ports {t['ports']} timeout {t['timeout']:g}s {mark} flows {t['flows']}")
    return 0


def cmd_ft_add(args) -> int:
    t = call("flowtable_add", {"name": args.name, "devices": args.devices.split(","),
                               "timeout": args.timeout}, path=args.socket)
    print(f"added flowtable {t['name']} on ports {t['ports']}")
    return 0


def cmd_ft_delete(args) -> int:
    t = call("flowtable_delete", {"name": args.name}, path=args.socket)
    print(f"deleted flowtable {t['name']} ({t['flows']} flow(s) handed back)")
    return 0


def cmd_ruleset_reload(args) -> int:
    path = str(Path(args.file).resolve()) if args.file else None
    r = call("ruleset_reload", {"path": path}, path=args.socket, timeout=120.0)
    if _json(args):
        _print_json({"reload": r})
        return 0
    print(f"ruleset {r['source']} loaded; flowtables added: {', '.join(r['added']) or 'none'}; "
          f"removed: {', '.join(r['removed']) or 'none'}; kept: {', '.join(r['kept']) or 'none'}")
    return 0


def cmd_stop(args) -> int:
    call("stop", {"keep_flows": args.keep_flows}, path=args.socket)
    print("daemon stopping; " + ("offloaded flows stay in the switch for the next daemon to adopt"
                                 if args.keep_flows else "every flow handed back to the kernel"))
    return 0


def cmd_monitor(args) -> int:
    """Like conntrack -E: what p4ft does to flows, as it happens, until ^C."""
    from .events import format_event
    try:
        for ev in stream("monitor", {"filter": _filter(args)}, path=args.socket):
            print(json.dumps(ev, sort_keys=True) if _json(args) else format_event(ev), flush=True)
    except KeyboardInterrupt:
        pass
    except BrokenPipeError:      # | head
        sys.stderr.close()
    return 0


def cmd_switch(args) -> int:
    from .softswitch.main import main as switch_main
    return switch_main(args)


class _Parser(argparse.ArgumentParser):
    """@FILE on the command line reads arguments from FILE: one option a line
    ("--port 1=lan0"), blank lines and # comments skipped (etc/p4ft.conf)."""

    def convert_arg_line_to_args(self, line: str) -> list[str]:
        line = line.split("#", 1)[0].strip()
        return line.split(None, 1) if line else []


def _output(p: argparse.ArgumentParser) -> None:
    p.add_argument("-o", "--output", choices=("text", "json"), default="text",
                   help="text (the default, like conntrack) or JSON (docs/p4ft.schema.json)")
    p.add_argument("-j", dest="output", action="store_const", const="json", help="same as -o json")


def _flow_filters(p: argparse.ArgumentParser) -> None:
    """conntrack's filters, on the original direction."""
    p.add_argument("-p", "--proto", choices=("tcp", "udp"))
    p.add_argument("-s", "--src", help="original source address")
    p.add_argument("-d", "--dst", help="original destination address")
    p.add_argument("--sport", type=int, help="original source port")
    p.add_argument("--dport", type=int, help="original destination port")
    p.add_argument("--offloaded", action=argparse.BooleanOptionalAction, default=None,
                   help="only flows in the switch (--no-offloaded: only the others)")
    p.add_argument("--flowtable")


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version
    try:
        return version("p4flowtable")
    except PackageNotFoundError:
        return "unknown (not installed)"


def _tls_options(p: argparse.ArgumentParser, side: str) -> None:
    g = p.add_argument_group("P4Runtime over TLS (docs/security.md)")
    if side == "client":
        g.add_argument("--tls-ca", metavar="PEM", help="CA that signed the switch's certificate: verify it, and "
                                                       "speak TLS")
        g.add_argument("--tls-cert", metavar="PEM", help="this controller's certificate, shown to the switch")
        g.add_argument("--tls-key", metavar="PEM", help="its private key")
        g.add_argument("--tls-server-name", metavar="NAME",
                       help="the name the switch's certificate carries, where it is not --grpc-addr's host")
        g.add_argument("--insecure", action="store_true",
                       help="accept plaintext P4Runtime to a switch that is not on this host (refused "
                            "without it: whoever reaches the port could program the switch)")
    else:
        g.add_argument("--tls-cert", metavar="PEM", help="the switch's certificate: serve TLS")
        g.add_argument("--tls-key", metavar="PEM", help="its private key")
        g.add_argument("--tls-ca", metavar="PEM",
                       help="require client certificates, signed by this CA (as BMv2's "
                            "--grpc-server-with-client-auth)")
        g.add_argument("--insecure", action="store_true",
                       help="serve plaintext P4Runtime on an address that is not loopback (refused without it)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="p4ft", description="Linux flowtable offload to a P4 switch", fromfile_prefix_chars="@")
    p.add_argument("--socket", default=DEFAULT_SOCKET, help="daemon socket (default %(default)s)")
    p.add_argument("-v", "--verbose", action="store_true")
    p.add_argument("--version", action="version", version=f"p4ft {_version()}")
    sub = p.add_subparsers(dest="cmd", required=True)

    d = sub.add_parser("daemon", help="run the controller")
    d.add_argument("--grpc-addr", default="127.0.0.1:9559", help="P4Runtime server of the switch")
    d.add_argument("--device-id", type=int, default=1)
    d.add_argument("--election-id", type=int, default=1)
    d.add_argument("--netns", help="router network namespace (slow path)")
    d.add_argument("--port", action="append", default=[], metavar="PORT=REPRESENTOR",
                   help="switch port and its representor in the router namespace (repeat)")
    d.add_argument("--ruleset", help="nftables ruleset with flowtables and 'flow add' statements")
    d.add_argument("--timeout", action="append", default=[], metavar="FLOWTABLE[/tcp|/udp]=SECONDS",
                   help="idle timeout of a flowtable's flows, or of its TCP or UDP flows only "
                        "(default 30, the kernel's)")
    d.add_argument("--ct-lease", type=float, default=86400.0, metavar="SECONDS",
                   help="conntrack timeout of an offloaded flow, renewed at half time (default one day, "
                        "the kernel's)")
    d.add_argument("--read-apart-from", type=_count("--read-apart-from"), metavar="CONNECTIONS",
                   help="conntrack entries from which a reconcile has the switch's entries read and decoded "
                        "by a second process, on another core, while the daemon adopts them (default 20000; "
                        "0: always)")
    d.add_argument("--no-idle-timeouts", action="store_true",
                   help="do not give entries idle timeouts; age flows by reading their counters when "
                        "less than a tenth of their timeout is left (for targets that cannot age entries)")
    d.add_argument("--poll-interval", type=float, default=1.0,
                   help="aging tick, seconds: lease renewals and, on a switch without idle timeouts, "
                        "counter reads of flows near expiry")
    d.add_argument("--p4info", help="P4Info text file (default: p4src/build)")
    d.add_argument("--target", choices=("bmv2", "tofino"), default="bmv2",
                   help="the switch's kind: bmv2 (BMv2 and the embedded target: the v1model program) or tofino "
                        "(the TNA program, packed for the SDE's P4Runtime server; docs/tofino.md)")
    d.add_argument("--device-config", help="BMv2 JSON (default: p4src/build); with --target tofino, the "
                                           "build's directory (default: p4src/build/tofino)")
    d.add_argument("--no-kernel-ruleset", action="store_true",
                   help="do not load the non-offload part of the ruleset into the kernel")
    d.add_argument("--metrics-addr", metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics")
    d.add_argument("--ct-label-bits", default="120-127", metavar="FIRST-LAST",
                   help="conntrack label bits p4ft uses as flowtable marks, one per flowtable; a ruleset "
                        "that uses them itself is refused (default %(default)s)")
    d.add_argument("--punt-rate", type=_count("--punt-rate"), metavar="PPS",
                   help="packets per second each ingress port may punt to the slow path; the switch drops "
                        "and counts the rest (p4ft stats: punt_dropped). 0: no limit (default 2000)")
    d.add_argument("--punt-burst", type=_count("--punt-burst"), metavar="PACKETS",
                   help="packets a port may punt at once above its rate after a quiet time "
                        "(default 500)")
    _tls_options(d, "client")
    d.set_defaults(func=cmd_daemon)

    fl = sub.add_parser("flow", help="offloaded and tracked flows").add_subparsers(dest="sub", required=True)
    fll = fl.add_parser("list", help="like conntrack -L, with [OFFLOAD] and switch counters "
                                     "(read from the switch for the flows listed)")
    fll.add_argument("--cached", action="store_true",
                     help="do not read the switch: show counters as last read (counters_age says how old)")
    _flow_filters(fll)
    _output(fll)
    fll.set_defaults(func=cmd_flow_list)

    mo = sub.add_parser("monitor", help="like conntrack -E: OFFLOAD, REFRESH, EXPIRE, TEARDOWN, HANDBACK, "
                                        "REFUSED, switch LOST/BACK, as they happen")
    _flow_filters(mo)
    _output(mo)
    mo.set_defaults(func=cmd_monitor)

    ft = sub.add_parser("flowtable", help="flowtables").add_subparsers(dest="sub", required=True)
    ftl = ft.add_parser("list")
    _output(ftl)
    ftl.set_defaults(func=cmd_ft_list)
    a = ft.add_parser("add")
    a.add_argument("name")
    a.add_argument("--devices", required=True, help="comma-separated representors")
    a.add_argument("--timeout", type=float, default=30.0)
    a.set_defaults(func=cmd_ft_add)
    dl = ft.add_parser("delete")
    dl.add_argument("name")
    dl.set_defaults(func=cmd_ft_delete)

    rs = sub.add_parser("ruleset", help="the daemon's nftables ruleset").add_subparsers(dest="sub", required=True)
    rl = rs.add_parser("reload", help="load FILE (default: the daemon's ruleset file) like nft -f; a file "
                                      "nft or p4ft refuses changes nothing (also: SIGHUP to the daemon)")
    rl.add_argument("file", nargs="?")
    _output(rl)
    rl.set_defaults(func=cmd_ruleset_reload)

    st = sub.add_parser("stop", help="stop the daemon (as SIGTERM: every flow handed back to the kernel)")
    st.add_argument("--keep-flows", action="store_true",
                    help="for a restart or an upgrade: leave offloaded flows in the switch and their kernel "
                         "leases; the next daemon finds the same pipeline and adopts them")
    st.set_defaults(func=cmd_stop)

    stp = sub.add_parser("stats", help="punts by reason, offloads, expiries, teardowns")
    _output(stp)
    stp.set_defaults(func=cmd_stats)

    sw = sub.add_parser("switch", help="run the embedded software switch (P4Runtime server)")
    sw.add_argument("-i", "--interface", action="append", default=[], metavar="PORT@IFNAME",
                    help="bind a switch port to a Linux interface (repeat), as simple_switch_grpc")
    sw.add_argument("--cpu-port", type=int, default=510)
    sw.add_argument("--grpc-addr", default="127.0.0.1:9559")
    sw.add_argument("--device-id", type=int, default=1)
    _tls_options(sw, "server")
    sw.set_defaults(func=cmd_switch)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    try:
        return args.func(args)
    except argparse.ArgumentTypeError as e:
        parser.error(str(e))
    except ApiError as e:
        print(f"p4ft: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
