"""Runs etc/p4ft.service under a real systemd, against the topology's switch
and router: the hardened unit checked by running it, not by reading it.

No systemd runs as PID 1 on the machines this project is built on, and a
systemd booted on the host's own file system cleans /tmp and /run as at
boot. So this boots one as PID 1 of a private pid and mount namespace, over
an overlay of / whose upper layer is a tmpfs: what it writes and deletes is
thrown away with it. The host's network namespace, /dev, /sys and the checkout are
shared. Root only; not part of `make test` (CI machines have no use for a
second init). Usage: python tests/run_unit_under_systemd.py [soft|bmv2]

It prints the daemon's bounding set, no_new_privs and seccomp as the kernel
reports them, offloads one TCP flow over mutual TLS and checks its payload,
then stops the service (flows handed back) and prints its result.
"""
import os
import subprocess
import sys
import tempfile
from pathlib import Path
ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "tests"), str(ROOT / "bmv2-topo"), str(ROOT / "controller")]
import p4flowtable  # noqa: F401  (first: it loads the P4Runtime protobufs, see proto.py)
from p4ft_topo import FlowtableNet, make_ruleset, ROUTER_NS
from integration import host_tool, read_json, wait_for
kind = sys.argv[1] if len(sys.argv) > 1 else "soft"


def protect_home() -> str:
    """As `make install` writes it: read-only where the checkout or its Python lives in a home."""
    places = (ROOT, Path(os.path.realpath(ROOT / ".venv/bin/python")))
    return "read-only" if any(str(p).startswith(("/home/", "/root/", "/run/user/")) for p in places) else "yes"


WORK = Path(tempfile.mkdtemp(prefix="p4ft-unit-", dir="/var/tmp"))
ENTER = r"""set -e
R=$SDROOT
mkdir -p $R/upper $R/work $R/merged
mount -t tmpfs tmpfs $R/upper
mkdir -p $R/upper/u $R/upper/w
mount -t overlay overlay -o lowerdir=/,upperdir=$R/upper/u,workdir=$R/upper/w $R/merged
M=$R/merged
mount -t proc proc $M/proc
mount --rbind /sys $M/sys
mount --rbind /dev $M/dev
mount -t tmpfs tmpfs $M/run
mkdir -p $M/run/netns $M/run/systemd/system
mount --rbind /run/netns $M/run/netns
mount -t tmpfs tmpfs $M/tmp
mount --bind "$REPO" "$M$REPO"
printf "[Unit]\nDescription=nothing but the unit under test\n" > $M/run/systemd/system/idle.target
cd $M
mkdir -p oldroot
pivot_root . oldroot
umount -l /oldroot
exec /lib/systemd/systemd --system --unit=${UNIT:-hello.service} --log-target=console --log-level=info --show-status=no
"""
def systemctl(*a):
    return subprocess.run(["nsenter", "-t", str(sdpid), "-m", "-p", "systemctl", *a], capture_output=True, text=True)
def api(cmd, args=None):
    from p4flowtable.api import call
    return call(cmd, args, path=str(R / "run/p4ft/p4ft.sock"))
from pki import make_pki
pki = make_pki(WORK / "pki")
net = FlowtableNet(kind, ruleset=make_ruleset("meta l4proto { tcp, udp } flow add @ft"), daemon=False,
                   switch_tls=(str(pki.ca), str(pki.switch.cert), str(pki.switch.key)))
net.start()
try:
    # systemd booted now, so that its copy of /run/netns holds the router's
    boot = subprocess.Popen(["unshare", "--mount", "--pid", "--fork", "--propagation", "private",
                             "bash", "-c", ENTER], env=dict(os.environ, SDROOT=str(WORK / "root"), REPO=str(ROOT),
                                                         UNIT="idle.target"),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    def systemd_pid():
        out = subprocess.run(["pgrep", "-f", "-P", str(boot.pid), "systemd --system"], capture_output=True, text=True).stdout.split()
        return int(out[0]) if out else None
    sdpid = wait_for(systemd_pid, 20, "systemd")
    R = Path(f"/proc/{sdpid}/root")
    wait_for(lambda: systemctl("is-system-running").stdout.strip() in ("running", "degraded"), 30, "systemd up")
    (R / "etc/p4ft").mkdir(parents=True, exist_ok=True)
    (R / "etc/p4ft/ruleset.nft").write_text(net.ruleset_path.read_text())
    conf = [f"--grpc-addr 127.0.0.1:{net.grpc_port}", f"--netns {ROUTER_NS}", "--election-id 10",
            *[f"--port {s['port']}={s['rep']}" for s in net.sides], "--ruleset /etc/p4ft/ruleset.nft",
            "--poll-interval 0.5", "--tls-ca /etc/p4ft/tls/ca.crt", "--tls-cert /etc/p4ft/tls/p4ft.crt",
            "--tls-key /etc/p4ft/tls/p4ft.key",
            # every reconcile's read made by the second process (entryread.py), so
            # that the one after the kill below runs it inside the unit, over TLS
            "--read-apart-from 0"]
    (R / "etc/p4ft/tls").mkdir(parents=True, exist_ok=True)
    for src, dst in ((pki.ca, "ca.crt"), (pki.primary.cert, "p4ft.crt"), (pki.primary.key, "p4ft.key")):
        (R / "etc/p4ft/tls" / dst).write_bytes(Path(src).read_bytes())
    (R / "etc/p4ft/tls/p4ft.key").chmod(0o600)
    (R / "etc/p4ft/p4ft.conf").write_text("\n".join(conf) + "\n")
    unit = (ROOT / "etc/p4ft.service").read_text().replace("@P4FT@", str(ROOT / ".venv/bin/p4ft")) \
        .replace("@DOCS@", str(ROOT)).replace("@PROTECT_HOME@", protect_home())
    (R / "etc/systemd/system/p4ft.service").write_text(unit)
    subprocess.run(["ip", "netns", "exec", ROUTER_NS, "sysctl", "-qw", "net.netfilter.nf_conntrack_acct=0"])
    systemctl("daemon-reload")
    r = systemctl("start", "p4ft.service")
    print("start:", r.returncode, r.stderr.strip())
    wait_for(lambda: (R / "run/p4ft/p4ft.sock").exists(), 30, "the API socket")
    wait_for(lambda: api("ping") == "pong", 30, "the daemon")
    main_pid = int(systemctl("show", "p4ft.service", "-p", "MainPID", "--value").stdout)
    st = {l.split(":")[0]: l.split(":", 1)[1].strip() for l in open(R / f"proc/{main_pid}/status")}
    print("daemon pid", main_pid, "CapBnd", st["CapBnd"], "CapEff", st["CapEff"], "NoNewPrivs", st["NoNewPrivs"],
          "Seccomp", st["Seccomp"])
    print("acct in router ns:", subprocess.run(["ip", "netns", "exec", ROUTER_NS, "sysctl", "-n",
                                                 "net.netfilter.nf_conntrack_acct"], capture_output=True, text=True).stdout.strip())
    d = WORK
    sink = host_tool(net.h2, "tcp-sink", "--port", "5001", "--out", str(d / "sink.json"))
    read_json(str(d / "sink.json.ready"))
    src = host_tool(net.h1, "tcp-source", "--host", "192.0.2.2", "--port", "5001", "--bytes", "3000000",
                    "--pause", "1.5", "--hold", "2", "--out", str(d / "src.json"))
    wait_for(lambda: api("stats").get("flows_offloaded_now", 0) >= 1, 20, "an offloaded flow")
    s = api("stats")
    print("offloaded:", s["flows_offloaded_now"], "offloaded total", s.get("offloaded"), "transport", s["p4runtime_transport"])
    src.wait(60); sink.wait(60)
    rx, tx = read_json(str(d / "sink.json")), read_json(str(d / "src.json.sent"))
    print("payload intact:", rx["bytes"] == 3000000 and rx["sha256"] == tx["sha256"])
    # killed: the unit starts it again (Restart=on-failure), and it reconciles
    # the pipeline it kept, reading through its second process
    systemctl("kill", "--signal=SIGKILL", "p4ft.service")
    wait_for(lambda: int(systemctl("show", "p4ft.service", "-p", "MainPID", "--value").stdout or 0)
             not in (0, main_pid), 30, "the unit to start the daemon again")
    def reconciled():
        try:
            s = api("stats")
        except Exception:       # not answering yet
            return None
        return s if "reconcile.read_apart" in s or "reconcile.reader_failed" in s else None
    s = wait_for(reconciled, 30, "the restarted daemon's reconcile")
    print("reconcile read by a second process inside the unit:", s.get("reconcile.read_apart"),
          "reader failed:", s.get("reconcile.reader_failed", 0))
    r = systemctl("stop", "p4ft.service")
    print("stop:", r.returncode, systemctl("show", "p4ft.service", "-p", "Result", "-p", "ExecMainStatus").stdout.split())
    print("--- journal"); print(subprocess.run(["nsenter", "-t", str(sdpid), "-m", "-p", "journalctl", "-u", "p4ft", "--no-pager", "-o", "cat"], capture_output=True, text=True).stdout[-1500:])
finally:
    if "sdpid" in globals():
        systemctl("stop", "p4ft.service")
        os.kill(sdpid, 9)
        boot.wait(10)
    net.stop()
    subprocess.run(["rm", "-rf", str(WORK)])
