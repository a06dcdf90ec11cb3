"""P4Runtime over mutual TLS on each available switch: BMv2 started with
--grpc-server-ssl and --grpc-server-with-client-auth, the embedded target
with --tls-ca/--tls-cert/--tls-key. The daemon with its certificate offloads
a flow that stays intact; clients the switch does not trust are refused at
the handshake and change nothing; a daemon the switch refuses exits naming
why; a backup with its own certificate takes over when the primary dies."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest

from integration import (forward_packets, host_tool, read_json, start_net, stats, switch_flow_entries,
                         targets, wait_for)
from p4flowtable.p4runtime import Session, SwitchRefused
from p4flowtable.tls import TlsFiles
from p4ft_topo import make_ruleset
from pki import make_pki

pytestmark = pytest.mark.integration
BACKUP = "/run/p4ft-topo-tls-backup.sock"


def _tls_args(ca, ident) -> list[str]:
    return ["--tls-ca", str(ca), "--tls-cert", str(ident.cert), "--tls-key", str(ident.key)]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module", params=targets())
def net(request, pki):
    n = start_net(request.param, ruleset=make_ruleset("meta l4proto { tcp, udp } flow add @ft"),
                  poll_interval=0.25, switch_tls=(str(pki.ca), str(pki.switch.cert), str(pki.switch.key)),
                  daemon_args=["--election-id", "10", *_tls_args(pki.ca, pki.primary)])
    n.reader_tls = TlsFiles(pki.ca, pki.backup.cert, pki.backup.key)   # the tests' own reads
    yield n
    n.stop()


@pytest.fixture(scope="module")
def chatter(net, tmp_path_factory):
    """TCP connections h1 -> h2 exchanging a message a second, offloaded."""
    d = tmp_path_factory.mktemp("chatter")
    server = host_tool(net.h2, "echo", "--port", "7000", "--out", str(d / "echo.json"))
    read_json(str(d / "echo.json.ready"))
    out = str(d / "tcp.json")
    client = host_tool(net.h1, "chatter", "--proto", "tcp", "--host", "192.0.2.2", "--port", "7000",
                       "--count", "20", "--interval", "1", "--duration", "30", "--out", out)
    read_json(out + ".up", timeout=60)
    wait_for(lambda: stats(net)["flows_offloaded_now"] >= 20, 30, "20 flows offloaded", interval=0.25)
    yield client, out
    client.kill()
    server.kill()


def test_the_daemon_with_its_certificate_offloads_over_mutual_tls(net, chatter):
    s = stats(net)
    assert s["p4runtime_transport"] == "mutual TLS" and s["role"] == "primary"
    assert len(switch_flow_entries(net)) == 2 * s["flows_offloaded_now"]
    # the chatter's packets counted by the switch's entries, not by the kernel
    def switched() -> int:
        return sum(e.counter_data.packet_count for e in switch_flow_entries(net, counters=True))
    fwd, counted = forward_packets(net), switched()
    wait_for(lambda: switched() >= counted + 80, 30, "80 packets through the offloaded entries", interval=0.25)
    assert forward_packets(net) - fwd < 10


@pytest.mark.parametrize("who", ["no certificate", "self-signed", "another CA's", "expired"])
def test_an_untrusted_client_is_refused_and_changes_nothing(net, pki, chatter, who):
    before = sorted(e.SerializeToString(deterministic=True) for e in switch_flow_entries(net))
    files = {"no certificate": TlsFiles(pki.ca),
             "self-signed": TlsFiles(pki.ca, pki.self_signed.cert, pki.self_signed.key),
             "another CA's": TlsFiles(pki.ca, pki.from_other_ca.cert, pki.from_other_ca.key),
             "expired": TlsFiles(pki.ca, pki.expired.cert, pki.expired.key)}[who]

    async def intrude():
        s = Session(f"127.0.0.1:{net.grpc_port}", 1, election_id=1 << 40, tls=files)
        with pytest.raises(SwitchRefused, match="does not accept this controller's certificate"):
            await s.connect(timeout=10)
    asyncio.run(intrude())
    after = sorted(e.SerializeToString(deterministic=True) for e in switch_flow_entries(net))
    assert after == before
    s = stats(net)
    assert s["role"] == "primary" and s["election_id"] == 10 and not s.get("switch_lost")


def test_a_daemon_the_switch_refuses_exits_naming_why(net, pki):
    for ident, words in ((pki.expired, "does not accept this controller's certificate"),
                         (pki.from_other_ca, "does not accept this controller's certificate")):
        with pytest.raises(RuntimeError) as e:
            net.start_daemon(socket_path="/run/p4ft-topo-tls-refused.sock", log_name="tls-refused.log",
                             extra_args=["--election-id", "20", *_tls_args(pki.ca, ident)])
        assert "exited (1)" in str(e.value) and "TLS" in str(e.value) and words in str(e.value)
    with pytest.raises(RuntimeError) as e:
        net.start_daemon(socket_path="/run/p4ft-topo-tls-refused.sock", log_name="tls-refused.log",
                         extra_args=["--election-id", "20", *_tls_args(pki.other_ca, pki.primary)])
    assert "the switch's certificate is not signed by --tls-ca" in str(e.value)
    assert stats(net)["role"] == "primary" and stats(net)["election_id"] == 10


@pytest.fixture(scope="module")
def backup(net, pki):
    """A second daemon with its own certificate, as a backup; it stays
    until the chatter is done (it is the primary after the take-over)."""
    p = net.start_daemon(socket_path=BACKUP, log_name="tls-backup.log",
                         extra_args=["--election-id", "5", *_tls_args(pki.ca, pki.backup)])
    yield p
    p.terminate()
    p.wait(15)


def test_a_backup_with_its_own_certificate_takes_over(net, chatter, backup):
    assert net.api("stats", socket_path=BACKUP)["role"] == "backup"
    n = stats(net)["flows_offloaded_now"]
    os.kill(net.daemon.pid, signal.SIGKILL)
    b = wait_for(lambda: (b := net.api("stats", socket_path=BACKUP))["role"] == "primary"
                 and b.get("reconcile.adopted", 0) >= n and b, 30, "the backup's take-over")
    assert b["p4runtime_transport"] == "mutual TLS" and b["election_id"] > 10
    assert len(switch_flow_entries(net)) == 2 * b["flows_offloaded_now"]


def test_no_connection_broke(chatter, backup):
    client, out = chatter
    client.wait(90)
    r = read_json(out)
    assert r["broken"] == [] and r["echoed"] > 0.9 * r["sent"]
