"""P4Runtime over mutual TLS against the embedded target's real gRPC server,
in this process (no root needed): who is let in, who is refused at the
handshake and with what words, and that a refusal changes nothing at the
switch. The same on BMv2 and the embedded target in a topology:
test_tls_switches.py. Certificates are made per session (pki.py)."""

from __future__ import annotations

import asyncio
import collections
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from p4flowtable.events import EventBus, FlowFilter, make_event
from p4flowtable.p4runtime import Session, SwitchRefused, SwitchUnavailable
from p4flowtable.role import SwitchRole
from p4flowtable.softswitch.server import SoftSwitchServer, serve_local
from p4flowtable.tls import TlsConfigError, TlsFiles, is_local, plaintext_allowed
from pki import make_pki

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    return make_pki(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def switch(pki):
    """The embedded target's P4Runtime server: TLS, client certificates required."""
    impl = SoftSwitchServer(1, 510)
    server, addr = serve_local(impl, credentials=TlsFiles(pki.ca, pki.switch.cert, pki.switch.key).server_credentials())
    yield impl, addr
    server.stop(0)


def _files(pki, who: str) -> TlsFiles:
    if who == "no certificate":
        return TlsFiles(pki.ca)
    ident = {"self-signed": pki.self_signed, "another CA's": pki.from_other_ca, "expired": pki.expired,
             "primary": pki.primary, "backup": pki.backup}[who]
    return TlsFiles(pki.ca, ident.cert, ident.key)


def run(coro):
    return asyncio.run(coro)


def test_the_controller_with_its_certificate_is_primary(pki, switch):
    impl, addr = switch

    async def go():
        s = Session(addr, 1, election_id=10, tls=_files(pki, "primary"))
        try:
            assert await s.connect(timeout=10) is True
            assert impl.primary is not None and impl.primary.peer == "certificate CN=p4ft-primary"
        finally:
            await s.close()
    run(go())


@pytest.mark.parametrize("who", ["no certificate", "self-signed", "another CA's", "expired"])
def test_a_client_the_switch_does_not_trust_is_refused_at_the_handshake(pki, switch, who):
    """With an election id above the primary's: were it let in, it would
    take the switch. It is refused before any P4Runtime message, at once
    (not after a connect timeout), in words that say what to look at; the
    primary and what it wrote stay."""
    impl, addr = switch

    async def go():
        primary = Session(addr, 1, election_id=10, tls=_files(pki, "primary"))
        await primary.connect(timeout=10)
        try:
            intruder = Session(addr, 1, election_id=1000, tls=_files(pki, who))
            t0 = asyncio.get_running_loop().time()
            with pytest.raises(SwitchRefused) as e:
                await intruder.connect(timeout=10)
            took = asyncio.get_running_loop().time() - t0
            assert "does not accept this controller's certificate" in str(e.value)
            assert took < 5, f"refused after {took:.1f}s: waited for the connect timeout"
            assert intruder.last_error == str(e.value)
            assert primary.is_primary and not primary.lost.is_set()
            assert impl.primary is not None and impl.primary.election_id == 10
            assert impl.election_id_past == 10        # the intruder's id never reached arbitration
        finally:
            await primary.close()
    run(go())


def test_a_switch_whose_certificate_another_ca_signed_is_refused_by_the_controller(pki, switch):
    _, addr = switch

    async def go():
        s = Session(addr, 1, election_id=10, tls=TlsFiles(pki.other_ca, pki.primary.cert, pki.primary.key))
        with pytest.raises(SwitchRefused, match="switch's certificate is not signed by --tls-ca"):
            await s.connect(timeout=10)
    run(go())


def test_a_switch_certificate_for_another_name_is_refused(pki, switch):
    _, addr = switch

    async def go():
        s = Session(addr, 1, election_id=10, tls=_files(pki, "primary"), server_name="switch.example")
        with pytest.raises(SwitchRefused, match="does not carry the name switch.example"):
            await s.connect(timeout=10)
        ok = Session(addr, 1, election_id=11, tls=_files(pki, "primary"), server_name="localhost")
        assert await ok.connect(timeout=10)
        await ok.close()
    run(go())


def test_plaintext_to_a_tls_switch_and_tls_to_a_plaintext_one_are_named(pki, switch):
    _, addr = switch
    plain, plain_addr = serve_local(SoftSwitchServer(1, 510))

    async def go():
        with pytest.raises(SwitchRefused, match="it expects TLS"):
            await Session(addr, 1, election_id=10).connect(timeout=10)
        with pytest.raises(SwitchRefused, match="does not speak TLS on that port"):
            await Session(plain_addr, 1, election_id=10, tls=_files(pki, "primary")).connect(timeout=10)
    try:
        run(go())
    finally:
        plain.stop(0)


def test_no_server_is_still_a_timeout_not_a_refusal(pki):
    with socket.socket() as held:       # a port nobody listens on
        held.bind(("127.0.0.1", 0))
        addr = f"127.0.0.1:{held.getsockname()[1]}"

    async def go():
        s = Session(addr, 1, tls=_files(pki, "primary"))
        with pytest.raises(SwitchUnavailable) as e:
            await s.connect(timeout=1)
        assert not isinstance(e.value, SwitchRefused) and "Connection refused" in str(e.value)
    run(go())


def test_a_refusal_while_reconnecting_is_counted_and_published(pki, switch):
    """The daemon's reconnect loop (role.py): a refused handshake is counted
    (p4ft stats: switch_tls_refused), logged, and published once per cause
    to the monitor (TLS_REFUSED)."""
    _, addr = switch

    async def go():
        s = Session(addr, 1, election_id=10, tls=_files(pki, "expired"))
        events, stats = EventBus(), collections.Counter()
        monitor = events.subscribe(FlowFilter())
        role = SwitchRole(s, switch=None, port_updates=list, mirror=None, events=events, stats=stats,
                          connect_timeout=5, clock=lambda: 0.0)
        before = None
        for _ in range(3):
            try:
                await s.connect(timeout=5)
            except SwitchRefused as e:
                role.refused(e, before)
                before = str(e)
        assert stats["switch_tls_refused"] == 3
        seen = [make_event(r) for r in await events.take(monitor)]
        assert [ev["event"] for ev in seen] == ["TLS_REFUSED"]
        assert "does not accept this controller's certificate" in seen[0]["reason"]
    run(go())


# -- the operator's mistakes, named before any connection ----------------------------

def test_plaintext_is_refused_off_the_host_unless_the_operator_says_insecure(caplog):
    assert is_local("127.0.0.1:9559") and is_local("[::1]:9559") and is_local("localhost:9559")
    assert is_local("unix:/run/p4rt.sock")
    assert not is_local("10.0.0.2:9559") and not is_local("[2001:db8::1]:9559") and not is_local("0.0.0.0:9559")
    assert not is_local("switch1.example:9559")
    plaintext_allowed("127.0.0.1:9559", False, "to")
    with pytest.raises(TlsConfigError, match="10.0.0.2:9559 in plaintext.*--insecure"):
        plaintext_allowed("10.0.0.2:9559", False, "to")
    plaintext_allowed("10.0.0.2:9559", True, "to")
    assert "in plaintext (--insecure)" in caplog.text


def test_wrong_files_are_named(pki, tmp_path):
    with pytest.raises(TlsConfigError, match="--tls-ca .*nowhere.pem: No such file"):
        TlsFiles(tmp_path / "nowhere.pem", pki.primary.cert, pki.primary.key).check(need_ca=True,
                                                                                     need_identity=True)
    with pytest.raises(TlsConfigError, match="the key is not the certificate's"):
        TlsFiles(pki.ca, pki.primary.cert, pki.backup.key).check(need_ca=True, need_identity=True)
    not_pem = tmp_path / "ca.txt"
    not_pem.write_text("hello\n")
    with pytest.raises(TlsConfigError, match="not a PEM file"):
        TlsFiles(not_pem).check(need_ca=True, need_identity=False)
    with pytest.raises(TlsConfigError, match="required together"):
        TlsFiles(pki.ca, pki.primary.cert).check(need_ca=True, need_identity=False)


def _p4ft(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "p4flowtable.cli", *args], capture_output=True, text=True,
                          timeout=60, env={"PYTHONPATH": str(ROOT / "controller"), "PATH": "/usr/bin:/bin"})


def test_the_cli_refuses_plaintext_off_the_host_and_bad_files(pki, tmp_path):
    r = _p4ft("--socket", str(tmp_path / "s"), "daemon", "--grpc-addr", "192.0.2.10:9559")
    assert r.returncode == 2 and "192.0.2.10:9559 in plaintext" in r.stderr and "--insecure" in r.stderr
    r = _p4ft("--socket", str(tmp_path / "s"), "daemon", "--grpc-addr", "192.0.2.10:9559", "--tls-ca",
              str(pki.ca), "--tls-cert", str(pki.primary.cert), "--tls-key", str(pki.backup.key))
    assert r.returncode == 2 and "the key is not the certificate's" in r.stderr
    r = _p4ft("switch", "--grpc-addr", "0.0.0.0:0")
    assert r.returncode == 2 and "0.0.0.0:0 in plaintext" in r.stderr
    r = _p4ft("switch", "--grpc-addr", "127.0.0.1:0", "--tls-cert", str(pki.switch.cert))
    assert r.returncode == 2 and "required together" in r.stderr
