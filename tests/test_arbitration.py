"""Client arbitration as the P4Runtime spec (5.4, 5.5) says, over raw
streams: the embedded target, and BMv2 as the reference where installed."""

import os
import queue
import shutil
import threading

import grpc
import pytest
from google.protobuf import text_format
from google.rpc import code_pb2
from p4.config.v1 import p4info_pb2
from p4.v1 import p4runtime_pb2 as p4r, p4runtime_pb2_grpc

from integration import ROOT
from p4ft_topo import switch_on_veths, wait_port

BUILD = ROOT / "p4src" / "build"
LINKS = [("p4ar-s1", "p4ar-p1")]


class Client:
    """One controller: a StreamChannel, and what the server tells it."""

    def __init__(self, addr: str):
        self.ch = grpc.insecure_channel(addr)
        self.stub = p4runtime_pb2_grpc.P4RuntimeStub(self.ch)
        self.out: queue.Queue = queue.Queue()
        self.got: queue.Queue = queue.Queue()
        self.call = self.stub.StreamChannel(iter(self.out.get, None))
        threading.Thread(target=self._read, daemon=True).start()
        self.eid = 0

    def _read(self):
        try:
            for r in self.call:
                if r.WhichOneof("update") == "arbitration":
                    self.got.put(r.arbitration)
        except grpc.RpcError:
            pass

    def arbitrate(self, eid: int) -> None:
        self.eid = eid
        self.out.put(p4r.StreamMessageRequest(arbitration=p4r.MasterArbitrationUpdate(
            device_id=1, election_id=p4r.Uint128(low=eid))))

    def heard(self, timeout: float = 5) -> tuple[str, int | None]:
        a = self.got.get(timeout=timeout)
        return (code_pb2.Code.Name(a.status.code),
                a.election_id.low if a.HasField("election_id") else None)

    def quiet(self) -> bool:
        """Nothing more was said to this client (an absence: waited for briefly)."""
        try:
            self.got.get(timeout=0.3)
            return False
        except queue.Empty:
            return True

    def write(self, updates=()) -> str:
        """A write (of nothing: the claim to be primary alone): its status code."""
        try:
            self.stub.Write(p4r.WriteRequest(device_id=1, election_id=p4r.Uint128(low=self.eid),
                                             updates=list(updates)))
            return "OK"
        except grpc.RpcError as e:
            return e.code().name

    def close(self) -> None:
        self.out.put(None)
        self.call.cancel()
        self.ch.close()


def run_sequence(addr: str) -> list:
    """The spec's rules, step by step; returns what each client heard."""
    log = []
    a, b, c = Client(addr), Client(addr), Client(addr)
    a.arbitrate(5)
    log.append(("a claims 5", a.heard()))
    p4info = p4info_pb2.P4Info()
    text_format.Parse((BUILD / "flowtable.p4info.txtpb").read_text(), p4info)
    a.stub.SetForwardingPipelineConfig(p4r.SetForwardingPipelineConfigRequest(
        device_id=1, election_id=p4r.Uint128(low=5),
        action=p4r.SetForwardingPipelineConfigRequest.VERIFY_AND_COMMIT,
        config=p4r.ForwardingPipelineConfig(p4info=p4info,
                                            p4_device_config=(BUILD / "flowtable.json").read_bytes())))
    b.arbitrate(3)
    log.append(("b claims 3", b.heard(), a.quiet()))
    log.append(("writes", a.write(), b.write()))
    c.arbitrate(7)
    log.append(("c claims 7", c.heard(), a.heard(), b.heard()))
    log.append(("writes", a.write(), c.write()))
    c.close()
    log.append(("c goes", a.heard(), b.heard()))
    log.append(("writes with no primary", a.write()))
    a.arbitrate(6)
    log.append(("a claims 6", a.heard(), b.quiet()))
    b.arbitrate(8)
    log.append(("b claims 8", b.heard(), a.heard()))
    log.append(("writes", a.write(), b.write()))
    a.close()
    b.close()
    return log


def spec_answers() -> list:
    return [
        ("a claims 5", ("OK", 5)),
        ("b claims 3", ("ALREADY_EXISTS", 5), True),
        ("writes", "OK", "PERMISSION_DENIED"),
        ("c claims 7", ("OK", 7), ("ALREADY_EXISTS", 7), ("ALREADY_EXISTS", 7)),
        ("writes", "PERMISSION_DENIED", "OK"),
        ("c goes", ("NOT_FOUND", 7), ("NOT_FOUND", 7)),       # no new primary: nobody has 7 or more
        ("writes with no primary", "PERMISSION_DENIED"),
        ("a claims 6", ("NOT_FOUND", 7), True),
        ("b claims 8", ("OK", 8), ("ALREADY_EXISTS", 8)),
        ("writes", "PERMISSION_DENIED", "OK"),
    ]


@pytest.fixture(scope="module")
def heard():
    if os.geteuid() != 0:
        pytest.skip("needs root (veth pairs for the switch's port)")
    out = {}
    for kind in ["soft"] + (["bmv2"] if shutil.which("simple_switch_grpc") else []):
        with switch_on_veths(kind, LINKS) as addr:
            host, port = addr.rsplit(":", 1)
            wait_port(host, int(port), 30)
            out[kind] = run_sequence(addr)
    return out


def test_the_embedded_target_arbitrates_as_the_spec_says(heard):
    assert heard["soft"] == spec_answers()


def test_bmv2_differs_from_the_spec_only_when_the_primary_goes(heard):
    """BMv2's P4Runtime server (PI) promotes the highest remaining client when
    the primary disconnects: the rule of spec v1.0, which v1.1 replaced (no
    primary until a client claims an election id at least the highest seen).
    Everywhere else it answers as the spec, and as the embedded target, do."""
    if "bmv2" not in heard:
        pytest.skip("BMv2 (simple_switch_grpc) is not installed on this machine")
    spec, got = spec_answers(), heard["bmv2"]
    assert [g for g, w in zip(got, spec) if g != w] == [
        ("c goes", ("OK", 5), ("ALREADY_EXISTS", 5)),
        ("writes with no primary", "OK"),
        ("a claims 6", ("OK", 6), True),
    ]


def test_a_session_arriving_after_a_higher_election_id_left_knows_there_is_no_primary():
    """Spec v1.1: once a primary with election id 1000 has gone, a client
    with 1 is told NOT_FOUND (no primary) at its first arbitration, with
    1000 as the highest id seen. Session marks no_primary then, so a
    daemon's standby claims 1001 at once; it used to wait for a later
    answer that never comes, a backup of no one."""
    import asyncio
    import time

    from p4flowtable.p4runtime import Session
    from p4flowtable.softswitch.server import SoftSwitchServer, serve_local
    switch = SoftSwitchServer(1, 510)
    server, addr = serve_local(switch)
    try:
        other = Client(addr)
        other.arbitrate(1000)
        assert other.heard()[0] == "OK"
        other.close()
        end = time.monotonic() + 10
        while switch.primary is not None:
            assert time.monotonic() < end, "the switch kept the closed stream's primary"
            time.sleep(0.02)

        async def main():
            s = Session(addr, 1, 1)
            try:
                assert await s.connect(5, allow_backup=True) is False
                assert s.highest_eid == 1000 and s.no_primary.is_set()
                assert await s.claim_primary() and s.election_id == 1001
            finally:
                await s.close()
        asyncio.run(main())
    finally:
        server.stop(0)
