#!/usr/bin/env python3
"""Mininet topology for p4flowtable: LAN host h1, WAN host h2, switch s1,
the router namespace (slow path) with one representor per switch port, and
the p4ft controller.

    h1 (10.0.1.1) --- port 1 [ s1 ] port 2 --- h2 (192.0.2.2)
                          |  CPU port 510 (P4Runtime stream)
                    p4ft daemon  <-->  router netns p4ft-r
                                        lan0 10.0.1.254/24  (rep. of port 1)
                                        wan0 192.0.2.1/24   (rep. of port 2, masquerade)

Run: sudo python3 bmv2-topo/p4ft_topo.py [--switch auto|bmv2|soft] [--cli|--demo]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from mininet.log import setLogLevel
from mininet.net import Mininet
from mininet.node import Switch
from mininet.topo import Topo

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "controller"))
PYTHON = sys.executable
CPU_PORT = 510
ROUTER_NS = "p4ft-r"
# Not /tmp/*.log: 'mn -c' deletes those.
LOG_DIR = Path("/tmp/p4ft")

# Dual stack: static IPv6 addresses and routes (no RA), neighbours found by
# the kernels' own neighbour discovery through the switch's punt path.
LAN = dict(host="10.0.1.1/24", router="10.0.1.254", rep="lan0", rep_mac="02:00:00:00:01:fe", port=1,
           host6="2001:db8:1::1/64", router6="2001:db8:1::fe")
WAN = dict(host="192.0.2.2/24", router="192.0.2.1", rep="wan0", rep_mac="02:00:00:00:02:01", port=2,
           host6="2001:db8:2::2/64", router6="2001:db8:2::fe")
# A second LAN port, for tests that need a third host (FlowtableNet(third_host=True)):
# in no flowtable's devices, so everything from it is punted.
LAN2 = dict(host="10.0.3.1/24", router="10.0.3.254", rep="lan1", rep_mac="02:00:00:00:03:fe", port=3,
            host6="2001:db8:3::1/64", router6="2001:db8:3::fe")
# A second uplink (FlowtableNet(sides=(LAN, WAN, WAN2))), as a multi-WAN router has.
WAN2 = dict(host="198.51.100.2/24", router="198.51.100.1", rep="wan1", rep_mac="02:00:00:00:03:01", port=3,
            host6="2001:db8:4::2/64", router6="2001:db8:4::fe")


def make_ruleset(offload_rule: str = "ip protocol tcp flow offload @ft", family: str = "ip",
                 nat: bool = True) -> str:
    """The router's ruleset: masquerade on the WAN side, one offload rule.
    family "inet" makes one table, and one flowtable, for IPv4 and IPv6
    (masquerade then also does NAT66). nat=False: routing only, no
    masquerade (h2 then sees h1's own address)."""
    masquerade = f"""
    chain postrouting {{
        type nat hook postrouting priority srcnat; policy accept;
        oifname "{WAN['rep']}" masquerade
    }}""" if nat else ""
    return f"""flush ruleset
table {family} p4ft {{
    flowtable ft {{
        hook ingress priority filter; devices = {{ {LAN['rep']}, {WAN['rep']} }};
    }}
    chain forward {{
        type filter hook forward priority filter; policy accept;
        counter
        {offload_rule}
    }}{masquerade}
}}
"""


DEFAULT_RULESET = make_ruleset()


def wait_until(pred, timeout: float, what: str, interval: float = 0.05, error=TimeoutError):
    """Poll pred until it returns something true (returned), or raise error
    after timeout seconds naming what was awaited and the last value seen."""
    end = time.monotonic() + timeout
    last = None
    while time.monotonic() < end:
        last = pred()
        if last:
            return last
        time.sleep(interval)
    raise error(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def wait_port(host: str, port: int, deadline: float, proc: subprocess.Popen | None = None) -> None:
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before listening on {host}:{port}")
        if port_in_use(host, port):
            return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on {host}:{port} after {deadline}s")


def port_in_use(host: str, port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex((host, port)) == 0


def free_tcp_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def switch_command(kind: str, ports: list[tuple[int, str]], grpc_addr: str, device_id: int = 1,
                   tls: tuple[str, str, str] | None = None) -> list[str]:
    """argv of a switch process: BMv2, or the embedded target with the same options.
    tls: (CA, certificate, key): serve P4Runtime over TLS and require client
    certificates signed by that CA."""
    port_args = [a for port, ifname in ports for a in ("-i", f"{port}@{ifname}")]
    if kind == "bmv2":
        tls_args = (["--grpc-server-ssl", "--grpc-server-cacert", tls[0], "--grpc-server-cert", tls[1],
                     "--grpc-server-key", tls[2], "--grpc-server-with-client-auth"] if tls else [])
        return (["simple_switch_grpc", "--device-id", str(device_id), "--no-p4"] + port_args
                + ["--", "--cpu-port", str(CPU_PORT), "--grpc-server-addr", grpc_addr] + tls_args)
    if kind == "soft":
        tls_args = ["--tls-ca", tls[0], "--tls-cert", tls[1], "--tls-key", tls[2]] if tls else []
        return ([PYTHON, "-m", "p4flowtable.cli", "switch", "--device-id", str(device_id),
                 "--cpu-port", str(CPU_PORT), "--grpc-addr", grpc_addr] + port_args + tls_args)
    raise ValueError(f"unknown switch kind {kind!r} (bmv2, soft)")


def start_switch_process(kind: str, ports: list[tuple[int, str]], grpc_addr: str,
                         log=subprocess.DEVNULL, tls: tuple[str, str, str] | None = None) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "controller"))
    return subprocess.Popen(switch_command(kind, ports, grpc_addr, tls=tls), stdout=log, stderr=subprocess.STDOUT,
                            env=env, start_new_session=True)


class P4RuntimeSwitch(Switch):
    """A switch process serving P4Runtime on loopback; pipeline pushed by p4ft."""

    grpc_port = 9559
    kind = "?"

    def __init__(self, name, grpc_port: int = 9559, device_id: int = 1,
                 tls: tuple[str, str, str] | None = None, **kw):
        kw["inNamespace"] = False
        super().__init__(name, **kw)
        self.grpc_port, self.device_id, self.tls = grpc_port, device_id, tls
        self.proc: subprocess.Popen | None = None
        LOG_DIR.mkdir(exist_ok=True)
        self.logfile = str(LOG_DIR / f"{name}-{self.kind}.log")

    @property
    def grpc_addr(self) -> str:
        return f"127.0.0.1:{self.grpc_port}"

    def port_list(self) -> list[tuple[int, str]]:
        return sorted((p, i.name) for i, p in self.ports.items() if p > 0 and i.name != "lo")

    def start(self, controllers) -> None:
        for intf in self.intfList():
            if intf.name != "lo":
                subprocess.run(["ethtool", "-K", intf.name, "tx", "off", "rx", "off", "tso", "off",
                                "gso", "off", "gro", "off"], capture_output=True)
        if port_in_use("127.0.0.1", self.grpc_port):
            # otherwise the wait below would find the other process and the
            # daemon would program it instead of this switch
            raise RuntimeError(f"{self.grpc_addr} is already served by another process (a switch left "
                               f"running by an earlier run?); stop it first")
        self.proc = start_switch_process(self.kind, self.port_list(), self.grpc_addr, open(self.logfile, "w"),
                                         tls=self.tls)
        wait_port("127.0.0.1", self.grpc_port, 30, self.proc)

    def stop(self, deleteIntfs=True) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
        super().stop(deleteIntfs)


class Bmv2Switch(P4RuntimeSwitch):
    kind = "bmv2"


class SoftSwitch(P4RuntimeSwitch):
    """The embedded target (p4ft switch): same JSON, same P4Runtime service."""

    kind = "soft"


def soft_switch_available() -> bool:
    try:
        import p4flowtable.softswitch.main  # noqa: F401
    except ImportError:
        return False
    return True


def pick_switch(kind: str = "auto") -> type[P4RuntimeSwitch]:
    if kind == "bmv2" or (kind == "auto" and shutil.which("simple_switch_grpc")):
        if not shutil.which("simple_switch_grpc"):
            raise RuntimeError("simple_switch_grpc is not installed")
        return Bmv2Switch
    if kind in ("soft", "auto"):
        if not soft_switch_available():
            raise RuntimeError("the embedded target (p4flowtable.softswitch) is not available")
        return SoftSwitch
    raise ValueError(f"unknown switch kind {kind!r} (auto, bmv2, soft)")


class FlowtableTopo(Topo):
    def build(self, switch_cls, sides=(LAN, WAN)):
        s1 = self.addSwitch("s1", cls=switch_cls)
        for i, side in enumerate(sides, 1):
            h = self.addHost(f"h{i}", ip=side["host"], defaultRoute=f"via {side['router']}")
            self.addLink(h, s1, port2=side["port"])


def sh(*argv: str, ns: str | None = ROUTER_NS, check: bool = True) -> str:
    cmd = (["ip", "netns", "exec", ns] if ns else []) + list(argv)
    res = subprocess.run(cmd, capture_output=True, text=True)
    if check and res.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {res.stderr.strip()}")
    return res.stdout


def add_veth(a: str, b: str) -> None:
    """A veth pair for a switch port, up, without IPv6 noise or offloads."""
    subprocess.run(["ip", "link", "del", a], capture_output=True)
    subprocess.run(["ip", "link", "add", a, "type", "veth", "peer", "name", b], check=True)
    for dev in (a, b):
        sh("sysctl", "-q", "-w", f"net.ipv6.conf.{dev}.disable_ipv6=1", ns=None, check=False)
        sh("ethtool", "-K", dev, "tx", "off", "rx", "off", "gro", "off", "gso", "off", "tso", "off",
           ns=None, check=False)
        sh("ip", "link", "set", dev, "up", ns=None)


@contextlib.contextmanager
def veth_links(pairs: list[tuple[str, str]]):
    """Fresh veth pairs for the block, deleted after it."""
    try:
        for a, b in pairs:
            add_veth(a, b)
        yield
    finally:
        for a, _ in pairs:
            subprocess.run(["ip", "link", "del", a], capture_output=True)


class SwitchAddr(str):
    """A switch's gRPC address, which also knows the switch's process id."""
    pid: int = 0


@contextlib.contextmanager
def switch_on_veths(kind: str, pairs: list[tuple[str, str]]):
    """A switch whose ports 1..n are the first ends of fresh veth pairs; yields
    its gRPC address (a SwitchAddr: .pid is the switch process)."""
    with veth_links(pairs):
        grpc_addr = SwitchAddr(f"127.0.0.1:{free_tcp_port()}")
        proc = start_switch_process(kind, [(i + 1, a) for i, (a, _) in enumerate(pairs)], grpc_addr)
        grpc_addr.pid = proc.pid
        try:
            yield grpc_addr
        finally:
            proc.terminate()
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()


class Router:
    """The slow path: a Linux network namespace with representors."""

    def __init__(self, name: str = ROUTER_NS, sides=(LAN, WAN)):
        self.name, self.sides = name, sides

    def start(self) -> None:
        self.stop()
        subprocess.run(["ip", "netns", "add", self.name], check=True)
        sh("ip", "link", "set", "lo", "up", ns=self.name)
        for side in self.sides:
            sh("ip", "tuntap", "add", "dev", side["rep"], "mode", "tap", ns=self.name)
            sh("ip", "link", "set", side["rep"], "address", side["rep_mac"], ns=self.name)
            sh("ip", "addr", "add", f"{side['router']}/24", "dev", side["rep"], ns=self.name)
            sh("ip", "-6", "addr", "add", f"{side['router6']}/64", "dev", side["rep"], "nodad", ns=self.name)
            sh("ip", "link", "set", side["rep"], "up", ns=self.name)
        sh("sysctl", "-q", "-w", "net.ipv4.ip_forward=1", ns=self.name)
        sh("sysctl", "-q", "-w", "net.ipv6.conf.all.forwarding=1", ns=self.name)
        sh("sysctl", "-q", "-w", "net.netfilter.nf_conntrack_events=1", ns=self.name, check=False)

    def stop(self) -> None:
        if os.path.exists(f"/run/netns/{self.name}"):
            subprocess.run(["ip", "netns", "del", self.name], capture_output=True)


class FlowtableNet:
    """The whole system, started and stopped as one."""

    def __init__(self, switch: str = "auto", ruleset: str = DEFAULT_RULESET,
                 timeouts: dict[str, float] | None = None, poll_interval: float = 0.5,
                 socket_path: str = "/run/p4ft-topo.sock", grpc_port: int = 9559, daemon: bool = True,
                 daemon_args: list[str] | None = None, ruleset_file: Path | None = None,
                 third_host: bool = False, sides: tuple | None = None,
                 switch_tls: tuple[str, str, str] | None = None):
        """ruleset: the ruleset's text; ruleset_file: a ruleset file used where
        it is (its includes are found beside it), in place of the text;
        third_host: h3 on a second LAN port (LAN2); sides: the hosts' sides
        h1, h2, ... in full (say (LAN, WAN, WAN2): two uplinks); switch_tls:
        (CA, certificate, key) of a switch serving P4Runtime over mutual TLS
        (the daemon's own --tls-* options go in daemon_args)."""
        self.switch_tls = switch_tls
        self.sides = sides or ((LAN, WAN, LAN2) if third_host else (LAN, WAN))
        self.switch_cls = pick_switch(switch)
        self.ruleset_text = ruleset
        self.timeouts = timeouts or {}
        self.poll_interval = poll_interval
        self.socket = socket_path
        self.grpc_port = grpc_port
        self.with_daemon = daemon
        self.daemon_args = list(daemon_args or [])
        self.router = Router(sides=self.sides)
        self.net: Mininet | None = None
        self.daemon: subprocess.Popen | None = None
        LOG_DIR.mkdir(exist_ok=True)
        self.daemon_log = str(LOG_DIR / "daemon.log")
        self.ruleset_path = Path(ruleset_file) if ruleset_file else LOG_DIR / "topo.nft"

    @property
    def kind(self) -> str:
        return self.switch_cls.kind

    def start(self) -> "FlowtableNet":
        subprocess.run(["mn", "-c"], capture_output=True)
        self.router.start()
        grpc_port, tls = self.grpc_port, self.switch_tls

        class Sw(self.switch_cls):
            def __init__(self, name, **kw):
                super().__init__(name, grpc_port=grpc_port, tls=tls, **kw)

        self.net = Mininet(topo=FlowtableTopo(Sw, self.sides), controller=None, autoSetMacs=True)
        self.net.start()
        for i, side in enumerate(self.sides, 1):
            h = self.net.get(f"h{i}")
            intf = h.defaultIntf().name
            h.cmd(f"ethtool -K {intf} tx off rx off tso off gso off gro off")
            h.cmd(f"sysctl -q -w net.ipv6.conf.{intf}.disable_ipv6=0 net.ipv6.conf.{intf}.accept_ra=0")
            h.cmd(f"ip -6 addr add {side['host6']} dev {intf} nodad")
            h.cmd(f"ip -6 route add default via {side['router6']} dev {intf}")
        if self.ruleset_path == LOG_DIR / "topo.nft":
            self.ruleset_path.write_text(self.ruleset_text)
        if self.with_daemon:
            self.start_daemon()
        return self

    def start_daemon(self, socket_path: str | None = None, extra_args=(), log_name: str = "daemon.log"
                     ) -> subprocess.Popen:
        """The p4ft daemon (another one, on its own socket, with socket_path:
        a backup controller, say); returns once it answers on its socket."""
        sock = socket_path or self.socket
        argv = [PYTHON, "-m", "p4flowtable.cli", "--socket", sock, "daemon",
                "--grpc-addr", f"127.0.0.1:{self.grpc_port}", "--netns", ROUTER_NS,
                *[a for side in self.sides for a in ("--port", f"{side['port']}={side['rep']}")],
                "--ruleset", str(self.ruleset_path), "--poll-interval", str(self.poll_interval)]
        for name, t in self.timeouts.items():
            argv += ["--timeout", f"{name}={t}"]
        argv += self.daemon_args + list(extra_args)
        env = dict(os.environ, PYTHONPATH=str(ROOT / "controller"))
        log_path = str(LOG_DIR / log_name)
        proc = subprocess.Popen(argv, stdout=open(log_path, "w"), stderr=subprocess.STDOUT,
                                env=env, start_new_session=True)
        if socket_path is None:
            self.daemon, self.daemon_log = proc, log_path
        end = time.monotonic() + 30
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise RuntimeError(f"p4ft daemon exited ({proc.returncode}):\n" + Path(log_path).read_text()[-3000:])
            if os.path.exists(sock):
                try:
                    self.api("ping", socket_path=sock)
                    return proc
                except Exception:
                    pass
            time.sleep(0.1)
        raise TimeoutError("p4ft daemon not ready after 30s:\n" + Path(log_path).read_text()[-3000:])

    def api(self, cmd: str, args: dict | None = None, socket_path: str | None = None):
        from p4flowtable.api import call
        return call(cmd, args, path=socket_path or self.socket)

    @property
    def h1(self):
        return self.net.get("h1")

    @property
    def h2(self):
        return self.net.get("h2")

    @property
    def h3(self):
        return self.net.get("h3")

    def stop(self) -> None:
        if self.daemon and self.daemon.poll() is None:
            self.daemon.terminate()
            try:
                self.daemon.wait(15)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
        if self.net:
            self.net.stop()
        self.router.stop()


def p4ft(*args: str, socket_path: str) -> str:
    env = dict(os.environ, PYTHONPATH=str(ROOT / "controller"))
    res = subprocess.run([PYTHON, "-m", "p4flowtable.cli", "--socket", socket_path, *args],
                         capture_output=True, text=True, env=env)
    return res.stdout + res.stderr


def demo(net: FlowtableNet) -> None:
    """A 20 MB transfer h1 -> h2, the flow shown offloaded with its switch counters."""
    import json
    tool = str(ROOT / "tests" / "hosttool.py")
    out = LOG_DIR / "demo"
    for f in LOG_DIR.glob("demo.*"):
        f.unlink()

    def report(suffix: str, deadline: float = 60) -> dict:
        path = Path(f"{out}.{suffix}")
        end = time.monotonic() + deadline
        while not path.exists():
            if time.monotonic() > end:
                raise TimeoutError(f"demo: no {path}")
            time.sleep(0.05)
        return json.loads(path.read_text())

    print(f"*** switch: {net.kind}")
    print("*** h1 -> h2: 20 MB over TCP through masquerade")
    sink = net.h2.popen([PYTHON, tool, "tcp-sink", "--port", "5001", "--out", f"{out}.sink"])
    report("sink.ready")
    src = net.h1.popen([PYTHON, tool, "tcp-source", "--host", "192.0.2.2", "--port", "5001",
                        "--bytes", "20000000", "--hold", "2", "--out", f"{out}.src"])
    report("src.sent")
    end = time.monotonic() + 5
    while time.monotonic() < end and not any(
            f["offload"] and f.get("counters_age") is not None and f["packets"][0] > 1000
            for f in net.api("flow_list")):
        time.sleep(0.05)
    print("*** p4ft flow list (data sent, connection still open)")
    print(p4ft("flow", "list", socket_path=net.socket))
    sent, got = report("src"), report("sink")
    src.wait(10)
    sink.wait(10)
    print(f"*** sha256 sent {sent['sha256'][:16]}..., received {got['sha256'][:16]}... "
          f"({got['bytes']} bytes): {'intact' if sent['sha256'] == got['sha256'] else 'DIFFERENT'}; "
          f"h2 saw the connection from {got['peer'][0]}:{got['peer'][1]}")
    print("*** p4ft flow list (after FIN: handed back to the kernel)")
    print(p4ft("flow", "list", socket_path=net.socket))
    print("*** p4ft stats")
    print(p4ft("stats", socket_path=net.socket))
    print("*** router forward-chain counter (packets the slow path forwarded)")
    print(sh("nft", "list", "chain", "ip", "p4ft", "forward"))


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--switch", default=os.environ.get("P4FT_SWITCH", "auto"))
    ap.add_argument("--demo", action="store_true", help="run traffic, show offload, tear down")
    args = ap.parse_args()
    if os.geteuid() != 0:
        print("p4ft_topo: needs root (network namespaces, Mininet)", file=sys.stderr)
        return 1
    setLogLevel("warning")
    net = FlowtableNet(args.switch).start()
    try:
        if args.demo:
            demo(net)
        else:
            from mininet.cli import CLI
            print(f"*** switch {net.kind} at 127.0.0.1:{net.grpc_port}; try: h1 ping h2, then "
                  f"'p4ft --socket {net.socket} flow list' in another shell")
            CLI(net.net)
    finally:
        net.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
